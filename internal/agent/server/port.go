package server

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

// procNetFiles are the socket tables portWait reads.
var procNetFiles = []string{"/proc/net/tcp", "/proc/net/tcp6"}

// tcpListen is the st field of a listening socket in /proc/net/tcp.
const tcpListen = "0A"

// portWait polls the socket tables until something listens on a TCP port
// (proto.MethodPortWait).
func (s *Server) portWait(st *stream, raw json.RawMessage) (any, error) {
	var a proto.PortWaitArgs
	if err := decodeArgs(raw, &a); err != nil {
		return nil, err
	}
	if a.Port < 1 || a.Port > 65535 {
		return nil, fmt.Errorf("%w: port_wait: port %d not in 1..65535", proto.ErrInvalidArgument, a.Port)
	}
	interval := 50 * time.Millisecond
	if a.IntervalMillis > 0 {
		interval = time.Duration(min(a.IntervalMillis, 10000)) * time.Millisecond
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		ok, err := listening(a.Port)
		if err != nil {
			return nil, fmt.Errorf("port_wait: %w", err)
		}
		if ok {
			return nil, nil
		}
		select {
		case <-tick.C:
		case <-st.ctx.Done():
			return nil, fmt.Errorf("%w: port_wait %d", proto.ErrCanceled, a.Port)
		}
	}
}

// listening reports whether a TCP socket listens on port, over IPv4 or IPv6.
func listening(port int) (bool, error) {
	found := 0
	for _, path := range procNetFiles {
		data, err := os.ReadFile(path)
		if os.IsNotExist(err) {
			continue // no IPv6, say
		}
		if err != nil {
			return false, err
		}
		found++
		if listensIn(data, port) {
			return true, nil
		}
	}
	if found == 0 {
		return false, fmt.Errorf("%w: no socket table in /proc/net", proto.ErrUnsupported)
	}
	return false, nil
}

// listensIn reports whether a /proc/net/tcp table has a LISTEN socket on
// port. Lines look like "  0: 0100007F:1F90 00000000:0000 0A ...".
func listensIn(table []byte, port int) bool {
	sc := bufio.NewScanner(bytes.NewReader(table))
	sc.Scan() // header
	for sc.Scan() {
		f := bytes.Fields(sc.Bytes())
		if len(f) < 4 || string(f[3]) != tcpListen {
			continue
		}
		i := bytes.LastIndexByte(f[1], ':')
		if i < 0 {
			continue
		}
		p, err := strconv.ParseUint(string(f[1][i+1:]), 16, 16)
		if err == nil && int(p) == port {
			return true
		}
	}
	return false
}
