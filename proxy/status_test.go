package proxy

import (
	"errors"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestSyncStatusHealth follows kube-proxy's health rules through the sync
// status alone: healthy while starting, unhealthy once a change waits
// healthTimeout (pending in the tracker, or kept by a failed sync), healthy
// again after a successful sync; the debug view carries the last error
// until then.
func TestSyncStatusHealth(t *testing.T) {
	tr := NewTracker("node-a")
	s := newSyncStatus(tr)
	now := time.Now()
	if !s.health(now.Add(time.Hour)).Healthy {
		t.Error("unhealthy before the loop started")
	}
	s.loopStarted(now)
	tr.ServiceHandler().OnAdd(&v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "a"}}, false)
	if !s.health(time.Now()).Healthy {
		t.Error("unhealthy with a fresh pending change")
	}
	if s.health(time.Now().Add(healthTimeout + time.Second)).Healthy {
		t.Error("healthy with a change pending for longer than healthTimeout")
	}
	// The loop takes the change and fails to program it: the tracker has
	// nothing pending, the status keeps the change's age.
	u := tr.Next()
	s.failed(time.Now(), u.Queued, errors.New("netlink: boom"))
	if s.health(time.Now().Add(healthTimeout + time.Second)).Healthy {
		t.Error("healthy after a failed sync of a change older than healthTimeout")
	}
	if v := s.view(); v.lastError != "netlink: boom" || v.lastErrorTime.IsZero() {
		t.Errorf("view after a failure: %+v", v)
	}
	s.synced(time.Now(), u.Snapshot)
	ph := s.health(time.Now().Add(healthTimeout + time.Second))
	if !ph.Healthy || len(ph.Status) != 2 {
		t.Errorf("after a successful sync: %+v", ph)
	}
	if v := s.view(); v.lastError != "" || v.programmed != u.Snapshot {
		t.Errorf("view after a success: error %q, programmed %p want %p", v.lastError, v.programmed, u.Snapshot)
	}
}
