// Package e2e holds the node proxy's end-to-end tests: real packets between
// pods of a real two-node `switchboard up` cluster (package localcluster),
// with pods and Services created through the API. It has no code of its
// own; the tests are in e2e_test.go and run as root (go test ./proxy/e2e/).
//
// They live apart from package proxy's kernel tests because a process can
// run only one kube-apiserver: the local cluster brings its own, so this
// package must not also start clustertest's.
package e2e
