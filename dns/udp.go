package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// ListenUDP opens n UDP sockets on addr sharing one port through
// SO_REUSEPORT, for one ServePacket each: the kernel spreads clients over
// the sockets, so n readers answer in parallel without sharing a socket
// lock. With port 0 the first socket picks the port the others join.
func ListenUDP(addr string, n int) ([]net.PacketConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
		return errors.Join(err, serr)
	}}
	var out []net.PacketConn
	for i := range max(n, 1) {
		pc, err := lc.ListenPacket(context.Background(), "udp", addr)
		if err != nil {
			for _, c := range out {
				c.Close()
			}
			return nil, err
		}
		if i == 0 {
			addr = pc.LocalAddr().String()
		}
		out = append(out, pc)
	}
	return out, nil
}

// ServePacket answers UDP queries on conn until ctx ends. One goroutine
// reads, answers and writes, reusing its buffers: the fast path needs no
// allocation. Queries it does not take go to the slow path, miekg/dns's own
// parsing and the full answering, in a goroutine of their own since a
// forwarded query can wait on an upstream.
func (s *Server) ServePacket(ctx context.Context, conn net.PacketConn) error {
	uc, ok := conn.(*net.UDPConn)
	if !ok {
		srv := &dns.Server{PacketConn: conn, Handler: s, UDPSize: dns.MaxMsgSize}
		return serveUntil(ctx, srv, srv.ActivateAndServe)
	}
	pktinfo, err := enablePktinfo(uc)
	if err != nil {
		return fmt.Errorf("dns: destination addresses of UDP queries: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { uc.Close() })
	defer stop()
	var (
		buf      = make([]byte, dns.MaxMsgSize)
		out      = make([]byte, 0, 4096)
		oob      = make([]byte, 128)
		replyOOB []byte
		scratch  = make([]byte, 0, 256)
		q        fastQuery
	)
	for {
		n, oobn, _, from, err := uc.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// Errors such as ECONNREFUSED from an earlier reply's ICMP
			// concern one client, not the socket.
			time.Sleep(time.Millisecond)
			continue
		}
		if n < 12 {
			continue // miekg/dns ignores packets shorter than a header
		}
		if pktinfo {
			replyOOB = replySource(oob[:oobn], replyOOB[:0])
		}
		start := time.Now()
		if parseFast(buf[:n], &q, scratch) {
			if reply, rcode, ok := s.answerFast(&q, out); ok {
				uc.WriteMsgUDPAddrPort(reply, replyOOB, from)
				out = reply[:0]
				s.metrics.observeFast(q.qtype, rcode, time.Since(start))
				continue
			}
		}
		w := &udpWriter{conn: uc, to: from, oob: append([]byte(nil), replyOOB...)}
		pkt := append([]byte(nil), buf[:n]...)
		go s.serveSlow(pkt, w)
	}
}

// serveSlow answers one packet the way miekg/dns's server does: responses
// are ignored, what its accept function rejects gets FORMERR or NOTIMP, a
// packet that does not parse gets FORMERR, and the rest goes to ServeDNS.
func (s *Server) serveSlow(pkt []byte, w dns.ResponseWriter) {
	dh := dns.Header{Id: binary.BigEndian.Uint16(pkt), Bits: binary.BigEndian.Uint16(pkt[2:]),
		Qdcount: binary.BigEndian.Uint16(pkt[4:]), Ancount: binary.BigEndian.Uint16(pkt[6:]),
		Nscount: binary.BigEndian.Uint16(pkt[8:]), Arcount: binary.BigEndian.Uint16(pkt[10:])}
	req := new(dns.Msg)
	action := dns.DefaultMsgAcceptFunc(dh)
	switch action {
	case dns.MsgIgnore:
		return
	case dns.MsgAccept:
		if err := req.Unpack(pkt); err == nil {
			s.ServeDNS(w, req)
			return
		}
		// Unpack set the header and whatever it parsed before failing,
		// as miekg/dns's server leaves its request.
	default:
		req.Unpack(pkt[:12]) // the header alone, as the server does
	}
	opcode := req.Opcode
	req.SetRcodeFormatError(req)
	req.Zero = false
	if action == dns.MsgRejectNotImplemented {
		req.Opcode = opcode
		req.Rcode = dns.RcodeNotImplemented
	}
	req.Ns, req.Answer, req.Extra = nil, nil, nil
	w.WriteMsg(req)
}

// udpWriter is the dns.ResponseWriter of one slow-path UDP query.
type udpWriter struct {
	conn *net.UDPConn
	to   netip.AddrPort
	oob  []byte
}

func (w *udpWriter) LocalAddr() net.Addr  { return w.conn.LocalAddr() }
func (w *udpWriter) RemoteAddr() net.Addr { return net.UDPAddrFromAddrPort(w.to) }
func (w *udpWriter) WriteMsg(m *dns.Msg) error {
	b, err := m.Pack()
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}
func (w *udpWriter) Write(b []byte) (int, error) {
	n, _, err := w.conn.WriteMsgUDPAddrPort(b, w.oob, w.to)
	return n, err
}
func (w *udpWriter) Close() error        { return nil }
func (w *udpWriter) TsigStatus() error   { return nil }
func (w *udpWriter) TsigTimersOnly(bool) {}
func (w *udpWriter) Hijack()             {}

// enablePktinfo asks for each query's destination address when conn is
// bound to a wildcard address, so that replies leave from the address the
// client asked (as miekg/dns does); a socket bound to one address needs
// nothing.
func enablePktinfo(conn *net.UDPConn) (bool, error) {
	la, ok := conn.LocalAddr().(*net.UDPAddr)
	if !ok || !la.IP.IsUnspecified() {
		return false, nil
	}
	rc, err := conn.SyscallConn()
	if err != nil {
		return false, err
	}
	var err4, err6 error
	if err := rc.Control(func(fd uintptr) {
		err4 = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
		err6 = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
	}); err != nil {
		return false, err
	}
	if err4 != nil && err6 != nil {
		return false, err4
	}
	return true, nil
}

// Empty reply control messages, to copy an address into without allocating.
var (
	pktinfo4 = unix.PktInfo4(&unix.Inet4Pktinfo{})
	pktinfo6 = unix.PktInfo6(&unix.Inet6Pktinfo{})
)

// replySource turns a query's IP_PKTINFO or IPV6_PKTINFO control message
// into the one that sends the reply from the query's destination address,
// appended to out; nothing if there is none.
func replySource(oob, out []byte) []byte {
	hdr := unix.SizeofCmsghdr
	for len(oob) >= hdr {
		// cmsghdr: length (native word), level, type (int32 each).
		var l int
		if hdr == 16 {
			l = int(binary.NativeEndian.Uint64(oob))
		} else {
			l = int(binary.NativeEndian.Uint32(oob))
		}
		level := int32(binary.NativeEndian.Uint32(oob[hdr-8:]))
		typ := int32(binary.NativeEndian.Uint32(oob[hdr-4:]))
		if l < hdr || l > len(oob) {
			return out
		}
		data := oob[hdr:l]
		switch {
		case level == unix.IPPROTO_IP && typ == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
			// The query's destination (ipi_addr) becomes the reply's
			// source (ipi_spec_dst).
			n := len(out)
			out = append(out, pktinfo4...)
			copy(out[n+unix.CmsgLen(0)+4:], data[8:12])
			return out
		case level == unix.IPPROTO_IPV6 && typ == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
			n := len(out)
			out = append(out, pktinfo6...)
			copy(out[n+unix.CmsgLen(0):], data[:16])
			return out
		}
		oob = oob[min(unix.CmsgSpace(l-hdr), len(oob)):]
	}
	return out
}
