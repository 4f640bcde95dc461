package measure

import "log"

// AtExit removes what a benchmark run has started (namespaces, processes,
// an API server, a cluster) when it stops early: Fatalf, Must and a signal
// handler call it. A run sets it once it has something to remove.
var AtExit = func() {}

// Fatalf runs AtExit, then logs and exits as log.Fatalf.
func Fatalf(format string, args ...any) {
	AtExit()
	log.Fatalf(format, args...)
}

// Must stops the run with err, if any, through Fatalf.
func Must(err error) {
	if err != nil {
		Fatalf("%v", err)
	}
}
