package nftables

// Encoding: set and map key layouts and the kernel byte form of elements,
// and queueing them into the transaction being built.

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
)

// chunk bounds the elements per netlink message: a message's element list
// is one attribute, whose length field has 16 bits.
const chunk = 400

func isBucket(name string) bool {
	_, ok := bucketSlots(name)
	return ok
}

// queue encodes elements per set and queues add (or delete) messages.
func (k *Tables) queue(f *family, elems []Elem, del bool) error {
	counts := map[string]int{}
	for _, e := range elems {
		counts[elemSet(e)]++
	}
	by := make(map[string][]nftables.SetElement, len(counts))
	for name, n := range counts {
		by[name] = make([]nftables.SetElement, 0, n)
	}
	var order []string
	for _, e := range elems {
		se, err := encode(f.is4, e)
		if err != nil {
			return err
		}
		name := elemSet(e)
		if len(by[name]) == 0 {
			order = append(order, name)
		}
		by[name] = append(by[name], se)
	}
	for _, name := range order {
		set := f.sets[name]
		if set == nil {
			return fmt.Errorf("element for unknown set %s in table %s", name, TableName)
		}
		list := by[name]
		for len(list) > 0 {
			n := min(chunk, len(list))
			var err error
			if del {
				err = k.conn.SetDeleteElements(set, list[:n])
			} else {
				err = k.conn.SetAddElements(set, list[:n])
			}
			if err != nil {
				return fmt.Errorf("queue elements of set %s: %w", name, err)
			}
			list = list[n:]
		}
	}
	return nil
}

// Key layouts. Concatenations pad every field to 4 bytes.
func addrType(is4 bool) nftables.SetDatatype {
	if is4 {
		return nftables.TypeIPAddr
	}
	return nftables.TypeIP6Addr
}

func setTypes(is4 bool, name string) (key, data nftables.SetDatatype, concat bool) {
	a := addrType(is4)
	if kind, ok := affinityKindOf(name); ok {
		// "front . slot : verdict" and, per slot, "front : verdict".
		var fields []nftables.SetDatatype
		if kind.withAddr {
			fields = append(fields, a)
		}
		fields = append(fields, nftables.TypeInetProto, nftables.TypeInetService)
		if strings.HasPrefix(name, kind.balance) {
			fields = append(fields, nftables.TypeMark)
		}
		return nftables.MustConcatSetType(fields...), nftables.TypeVerdict, true
	}
	switch {
	case strings.HasPrefix(name, setServicePrefix) || strings.HasPrefix(name, setShortCircuitPrefix):
		return nftables.MustConcatSetType(a, nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeMark),
			nftables.MustConcatSetType(a, nftables.TypeInetService), true
	case strings.HasPrefix(name, setNodePortPrefix) || strings.HasPrefix(name, setShortCircuitNodePortPrefix):
		return nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeMark),
			nftables.MustConcatSetType(a, nftables.TypeInetService), true
	case name == setLBAllowed:
		return nftables.MustConcatSetType(a, nftables.TypeInetProto, nftables.TypeInetService, a), nftables.TypeInvalid, true
	case name == setNoEndpoints || name == setNoLocalEndpoints || name == setLBRestricted || name == setMasqExternal || name == setMasqCluster || name == setShortCircuit || strings.HasPrefix(name, setAffinityPrefix):
		return nftables.MustConcatSetType(a, nftables.TypeInetProto, nftables.TypeInetService), nftables.TypeInvalid, true
	case name == setNoEndpointsNodePort || name == setNoLocalEndpointsNodePort || name == setMasqNodePort || name == setShortCircuitNodePort:
		return nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService), nftables.TypeInvalid, true
	case name == setHairpin:
		return nftables.MustConcatSetType(a, a), nftables.TypeInvalid, true
	default: // setNodeIPs, setClusterIPs
		return a, nftables.TypeInvalid, false
	}
}

func protoNum(p v1.Protocol) byte {
	switch p {
	case v1.ProtocolUDP:
		return unix.IPPROTO_UDP
	case v1.ProtocolSCTP:
		return unix.IPPROTO_SCTP
	default:
		return unix.IPPROTO_TCP
	}
}

func pad4(b []byte) []byte {
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// encode renders an element in the kernel's byte layout.
func encode(is4 bool, e Elem) (nftables.SetElement, error) {
	var key []byte
	if e.Addr.IsValid() {
		if e.Addr.Is4() != is4 {
			return nftables.SetElement{}, fmt.Errorf("address %s in the wrong family's set %s", e.Addr, e.Set)
		}
		key = append(key, e.Addr.AsSlice()...)
	}
	if e.Proto != "" {
		key = append(key, pad4([]byte{protoNum(e.Proto)})...)
		key = append(key, pad4(binary.BigEndian.AppendUint16(nil, e.Port))...)
	}
	if e.Slot >= 0 && !isAffinityCheck(e.Set) {
		// numgen writes its result in host byte order.
		key = append(key, binaryutil.NativeEndian.PutUint32(uint32(e.Slot))...)
	}
	if e.Addr2.IsValid() && !isAffinityBalance(e.Set) && !isAffinityCheck(e.Set) {
		key = append(key, e.Addr2.AsSlice()...)
	}
	se := nftables.SetElement{Key: key}
	if e.Range.IsValid() {
		// Concatenated ranges: every field is a range; only the last
		// differs between start and end.
		last := lastAddr(e.Range)
		se.Key = append(key, e.Range.Masked().Addr().AsSlice()...)
		se.KeyEnd = append(slices.Clone(key), last.AsSlice()...)
	}
	switch {
	case !e.IsMap():
	case isAffinityBalance(e.Set):
		se.VerdictData = &expr.Verdict{Kind: expr.VerdictGoto, Chain: affinityEndpointChain + endpointID(e)}
	case isAffinityCheck(e.Set):
		se.VerdictData = &expr.Verdict{Kind: expr.VerdictJump, Chain: affinityCheckChain + endpointID(e)}
	default:
		se.Val = append(e.To.Addr().AsSlice(), pad4(binary.BigEndian.AppendUint16(nil, e.To.Port()))...)
	}
	return se, nil
}

// lastAddr is the highest address in p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// bucketSlots parses the slot count (for affinity-T sets, the timeout in
// seconds) out of a bucket map's name.
func bucketSlots(name string) (uint32, bool) {
	if kind, ok := affinityKindOf(name); ok {
		s, ok := strings.CutPrefix(name, kind.balance)
		if !ok {
			// affchk-k-slot, the set an affchk-k element is in.
			s, _, _ = strings.Cut(strings.TrimPrefix(name, kind.check), "-")
		}
		n, err := strconv.ParseUint(s, 10, 32)
		return uint32(n), err == nil && n > 0
	}
	for _, p := range []string{setServicePrefix, setNodePortPrefix, setAffinityPrefix, setShortCircuitPrefix, setShortCircuitNodePortPrefix} {
		if s, ok := strings.CutPrefix(name, p); ok {
			n, err := strconv.ParseUint(s, 10, 32)
			return uint32(n), err == nil && n > 0
		}
	}
	return 0, false
}
