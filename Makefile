# SmolVM for Go. `make` builds bin/smolvm, bin/smolvm-agent and
# bin/containerd-shim-smolvm-v2 (static).
GO ?= go
BIN := bin
export CGO_ENABLED := 0

.PHONY: all build setup user test vet fmt deps clean proto

all: build

build:
	$(GO) build -trimpath -o $(BIN)/ ./cmd/...

# deps installs the host packages SmolVM uses (Debian/Ubuntu, as root).
deps:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		qemu-system-x86 e2fsprogs mmdebstrap busybox-static nftables iproute2 \
		openssh-client cpio ca-certificates containerd \
		containernetworking-plugins >/dev/null

# user: the unprivileged system user "smolvm" QEMU runs as (as root; idempotent).
user: build
	./$(BIN)/smolvm setup

# setup: host packages, binaries, the VMM user, the containerd shim in PATH,
# and the default image (Debian bookworm).
PREFIX ?= /usr/local
setup: deps build user
	install -m 0755 $(BIN)/containerd-shim-smolvm-v2 $(PREFIX)/bin/
	./$(BIN)/smolvm image build default

vet:
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed:"; gofmt -l .; exit 1; }
	$(GO) vet ./...

# test: the whole suite, one package at a time (VM tests share 2 CPUs under
# TCG), then a short fuzz run of the agent frame decoder. -race needs cgo.
test: vet
	CGO_ENABLED=1 $(GO) test -race -count=1 -p 1 -timeout 20m ./...
	CGO_ENABLED=1 $(GO) test -run "^$$" -fuzz FuzzDecode -fuzztime 15s ./internal/agent/proto

clean:
	rm -rf $(BIN)

# proto regenerates the E2B envd code from our .proto files (needs protoc,
# protoc-gen-go and protoc-gen-connect-go; the generated code is committed).
proto:
	cd internal/server/e2b && protoc -I proto \
		--go_out=. --go_opt=module=github.com/smolvm-go/smolvm/internal/server/e2b \
		--connect-go_out=. --connect-go_opt=module=github.com/smolvm-go/smolvm/internal/server/e2b \
		process/process.proto filesystem/filesystem.proto
