// Pins the modules whose CRDs the test control plane installs; nothing is compiled.
// scripts/controlplane.sh copies the CRD files from `go mod download -json` Dir, and
// go.sum verifies the downloads. Do not run `go mod tidy` here: with no Go packages it
// would drop these requirements.
module github.com/kubestellar/ksit-exporter/tests/controlplane/crds

go 1.24.0

require (
	// ServiceMonitor, PodMonitor, PrometheusRule, Prometheus, ... (example/prometheus-operator-crd/).
	github.com/prometheus-operator/prometheus-operator v0.85.0
	// ManagedCluster (cluster/v1/).
	open-cluster-management.io/api v1.2.0
)
