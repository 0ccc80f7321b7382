// Pins cert-manager, whose CRDs (deploy/crds/) tests/helm_chart.rs installs so that the chart's
// Issuers and Certificates are accepted; nothing is compiled, and no cert-manager runs. Do not
// run `go mod tidy` here: with no Go packages it would drop the requirement.
module github.com/kubestellar/ksit-exporter/tests/controlplane/helm/cert-manager

go 1.24.0

require github.com/cert-manager/cert-manager v1.21.2
