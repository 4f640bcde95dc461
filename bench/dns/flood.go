package main

import (
	"encoding/binary"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/switchboard/switchboard/bench/measure"
)

// The forward flood (-flood N): N queries for distinct names outside the
// zone at -flood-rate per second, against an upstream that reads every
// query and never answers, as a resolver that went away does. It measures
// what a server's forwarding costs when nothing comes back: how its memory
// grows (VmRSS sampled every 20 ms) and what the clients get (answers by
// rcode, how soon, and how many get none).

var (
	floodN    = flag.Int("flood", 0, "run only the forward flood: this many queries for names outside the zone against an upstream that never answers")
	floodRate = flag.Int("flood-rate", 3000, "queries per second of the forward flood")
	floodWait = flag.Duration("flood-wait", 10*time.Second, "how long after the last query the flood waits for late answers")
)

// blackhole is an upstream resolver that reads queries and never answers.
func blackhole() (addr string, stop func()) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	must(err)
	var read int
	var mu sync.Mutex
	go func() {
		buf := make([]byte, 65535)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			mu.Lock()
			read++
			mu.Unlock()
		}
	}()
	return pc.LocalAddr().String(), func() {
		pc.Close()
		mu.Lock()
		defer mu.Unlock()
		log.Printf("the blackhole upstream read %d queries", read)
	}
}

// floodResult is what one server did under the flood.
type floodResult struct {
	sent, answered int
	byRcode        map[string]int
	p50, p99, max  time.Duration // time to an answer, of those answered
	idle, peak     int           // VmRSS in kB before the flood and its highest sample
	hwmBefore      string        // VmHWM before the flood: the start-up's
	end, hwm       string        // VmRSS after the wait for late answers, VmHWM
	threads        string
	// Datagrams the kernel dropped for want of receive buffer space: at
	// the server's sockets (queries) and at the flood's own (answers).
	serverDrops, clientDrops int
}

// flood sends the queries to addr from one socket at a steady rate while
// sampling pid's VmRSS, then waits for late answers.
func flood(pid int, addr string) floodResult {
	r := floodResult{byRcode: map[string]int{}}
	r.idle = rssKB(pid)
	r.hwmBefore = measure.MB(measure.Status(pid, "VmHWM"))
	ua, err := net.ResolveUDPAddr("udp", addr)
	must(err)
	conn, err := net.DialUDP("udp", nil, ua)
	must(err)
	defer conn.Close()
	must(conn.SetReadBuffer(8 << 20))
	n := *floodN
	if n > 65536 {
		log.Fatalf("-flood %d: at most 65536 queries (one per message ID)", n)
	}
	sentAt := make([]time.Time, n)
	answered := make([]bool, n)
	var lat []time.Duration
	var mu sync.Mutex
	done := make(chan struct{})
	go func() { // answers
		defer close(done)
		buf := make([]byte, 65535)
		for {
			k, err := conn.Read(buf)
			if err != nil {
				return
			}
			if k < 12 {
				continue
			}
			id := int(binary.BigEndian.Uint16(buf))
			m := new(dns.Msg)
			rcode := "unparsable"
			if m.Unpack(buf[:k]) == nil {
				rcode = dns.RcodeToString[m.Rcode]
			}
			mu.Lock()
			if id < n && !answered[id] && !sentAt[id].IsZero() {
				answered[id] = true
				r.answered++
				r.byRcode[rcode]++
				lat = append(lat, time.Since(sentAt[id]))
			}
			mu.Unlock()
		}
	}()
	stopSampling := make(chan struct{})
	sampled := make(chan int)
	go func() { // VmRSS samples
		peak := 0
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stopSampling:
				sampled <- peak
				return
			case <-t.C:
				peak = max(peak, rssKB(pid))
			}
		}
	}()
	q := new(dns.Msg)
	start := time.Now()
	for i := range n {
		// The i-th query leaves at start + i/rate.
		if d := time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(*floodRate))); d > 0 {
			time.Sleep(d)
		}
		q.SetQuestion(fmt.Sprintf("flood%05d.example.org.", i), dns.TypeA)
		q.Id = uint16(i)
		b, err := q.Pack()
		must(err)
		mu.Lock()
		sentAt[i] = time.Now()
		mu.Unlock()
		if _, err := conn.Write(b); err != nil {
			log.Printf("send %d: %v", i, err)
			continue
		}
		r.sent++
	}
	log.Printf("sent %d queries in %v; waiting %v for late answers", r.sent, time.Since(start).Round(time.Millisecond), *floodWait)
	time.Sleep(*floodWait)
	close(stopSampling)
	r.peak = <-sampled
	r.end = measure.MB(measure.Status(pid, "VmRSS"))
	r.hwm = measure.MB(measure.Status(pid, "VmHWM"))
	r.threads = measure.Status(pid, "Threads")
	r.serverDrops = udpDrops(ua.Port)
	r.clientDrops = udpDrops(conn.LocalAddr().(*net.UDPAddr).Port)
	conn.Close()
	<-done
	slices.Sort(lat)
	if len(lat) > 0 {
		r.p50, r.p99, r.max = lat[len(lat)*50/100], lat[len(lat)*99/100], lat[len(lat)-1]
	}
	return r
}

// udpDrops sums the drops column of /proc/net/udp and udp6 over the
// sockets bound to port.
func udpDrops(port int) int {
	total := 0
	for _, f := range []string{"/proc/net/udp", "/proc/net/udp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n")[1:] {
			fields := strings.Fields(l)
			if len(fields) < 13 {
				continue
			}
			_, hexPort, _ := strings.Cut(fields[1], ":")
			if p, err := strconv.ParseInt(hexPort, 16, 32); err != nil || int(p) != port {
				continue
			}
			d, _ := strconv.Atoi(fields[len(fields)-1])
			total += d
		}
	}
	return total
}

// rssKB is pid's VmRSS in kB, 0 if unreadable.
func rssKB(pid int) int {
	var kb int
	fmt.Sscan(measure.Status(pid, "VmRSS"), &kb)
	return kb
}

// printFlood prints the flood's table, one column per server.
func printFlood(names []string, results []floodResult) {
	type row struct {
		name string
		r    floodResult
	}
	var rows []row
	for i := range names {
		rows = append(rows, row{names[i], results[i]})
	}
	fmt.Printf("\nforward flood: %d queries for distinct names outside the zone at %d/s, upstream never answers; %v wait for late answers\n",
		*floodN, *floodRate, *floodWait)
	line := measure.Table(36, rows, func(r row) string { return r.name })
	kb := func(v int) string { return measure.MB(strconv.Itoa(v) + " kB") }
	line("sent", func(r row) string { return strconv.Itoa(r.r.sent) })
	line("answered", func(r row) string { return strconv.Itoa(r.r.answered) })
	line("no answer", func(r row) string { return strconv.Itoa(r.r.sent - r.r.answered) })
	line("dropped queries (server sockets)", func(r row) string { return strconv.Itoa(r.r.serverDrops) })
	line("dropped answers (flood socket)", func(r row) string { return strconv.Itoa(r.r.clientDrops) })
	var rcodes []string
	for _, r := range results {
		for rc := range r.byRcode {
			if !slices.Contains(rcodes, rc) {
				rcodes = append(rcodes, rc)
			}
		}
	}
	slices.Sort(rcodes)
	for _, rc := range rcodes {
		line("answered "+rc, func(r row) string { return strconv.Itoa(r.r.byRcode[rc]) })
	}
	line("time to answer p50", func(r row) string { return r.r.p50.Round(time.Microsecond).String() })
	line("time to answer p99", func(r row) string { return r.r.p99.Round(time.Microsecond).String() })
	line("time to answer max", func(r row) string { return r.r.max.Round(time.Microsecond).String() })
	line("VmRSS before", func(r row) string { return kb(r.r.idle) })
	line("VmRSS peak (20 ms samples)", func(r row) string { return kb(r.r.peak) })
	line("VmHWM before the flood (start-up)", func(r row) string { return r.r.hwmBefore })
	line("VmHWM after", func(r row) string { return r.r.hwm })
	line("VmRSS after the wait", func(r row) string { return r.r.end })
	line("threads after", func(r row) string { return r.r.threads })
	os.Stdout.Sync()
}
