# SmolVM for Go. `make` builds bin/smolvm and bin/smolvm-agent (static).
GO ?= go
BIN := bin
export CGO_ENABLED := 0

.PHONY: all build test vet fmt deps clean

all: build

build:
	$(GO) build -trimpath -o $(BIN)/ ./cmd/...

# deps installs the host packages SmolVM uses (Debian/Ubuntu, as root).
deps:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		qemu-system-x86 e2fsprogs mmdebstrap busybox-static nftables iproute2 \
		openssh-client cpio ca-certificates >/dev/null

vet:
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed:"; gofmt -l .; exit 1; }
	$(GO) vet ./...

# test: the whole suite. -race needs cgo.
test: vet
	CGO_ENABLED=1 $(GO) test -race -count=1 ./...

clean:
	rm -rf $(BIN)
