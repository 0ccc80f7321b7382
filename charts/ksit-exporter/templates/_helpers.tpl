{{/* Names the cluster-scoped objects; the kustomize bases' name unless overridden. */}}
{{- define "ksit-exporter.fullname" -}}
{{- default "ksit-exporter" .Values.fullnameOverride | trunc 54 | trimSuffix "-" -}}
{{- end -}}

{{/* Helm's labels, on every object beside the bases' own labels (never in a selector). */}}
{{- define "ksit-exporter.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* The webhook's objects' labels, as manifests/webhook/base. */}}
{{- define "ksit-exporter.webhook.labels" -}}
app.kubernetes.io/name: ksit-webhook
app.kubernetes.io/part-of: ksit-exporter
{{ include "ksit-exporter.labels" . }}
{{- end -}}

{{/* The webhook's Service DNS names, which its serving certificate must carry. */}}
{{- define "ksit-exporter.webhook.dnsNames" -}}
- ksit-webhook.{{ .Release.Namespace }}.svc
- ksit-webhook.{{ .Release.Namespace }}.svc.cluster.local
{{- end -}}

{{- define "ksit-exporter.webhook.image" -}}
{{ .Values.webhook.image.repository }}:{{ .Values.webhook.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "ksit-exporter.sidecar.image" -}}
{{ .Values.sidecar.image.repository }}:{{ .Values.sidecar.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/*
The generated CA and serving pair: what the Secret ksit-webhook-tls already holds, so an
upgrade keeps the pair and the caBundle the API server trusts; new ones when it is missing
(first install, `helm template`, or after the Secret was deleted to renew). Returns a dict of
base64 values: ca.crt, tls.crt, tls.key. Where it generates, each include makes another pair:
include it once and share the result (mutatingwebhookconfiguration.yaml), so that the Secret
and the caBundle match.
*/}}
{{- define "ksit-exporter.webhook.certs" -}}
{{- $data := (lookup "v1" "Secret" .Release.Namespace "ksit-webhook-tls").data | default dict -}}
{{- if and (index $data "ca.crt") (index $data "tls.crt") (index $data "tls.key") -}}
{{- pick $data "ca.crt" "tls.crt" "tls.key" | toJson -}}
{{- else -}}
{{- $days := int .Values.webhook.certValidityDays -}}
{{- $ca := genCA "ksit-exporter webhook CA" $days -}}
{{- $dns := include "ksit-exporter.webhook.dnsNames" . | fromYamlArray -}}
{{- $cert := genSignedCert (first $dns) nil $dns $days $ca -}}
{{- dict "ca.crt" ($ca.Cert | b64enc) "tls.crt" ($cert.Cert | b64enc) "tls.key" ($cert.Key | b64enc) | toJson -}}
{{- end -}}
{{- end -}}

{{/*
A ServiceMonitor's or PodMonitor's namespaceSelector: one that lives outside KSIT's namespace
(monitoring.*.namespace, e.g. KubeStellar's ks-monitoring) must name KSIT's namespace, or
prometheus-operator looks for the Service or pods in the monitor's own namespace.
Arguments: (list <the monitor's values> <KSIT's namespace>).
*/}}
{{- define "ksit-exporter.monitorNamespaceSelector" -}}
{{- $values := index . 0 }}
{{- $ksit := index . 1 }}
{{- if and $values.namespace (ne $values.namespace $ksit) }}
namespaceSelector:
  matchNames:
    - {{ $ksit }}
{{- end }}
{{- end }}

{{/*
The scrape settings of a ServiceMonitor endpoint or PodMonitor podMetricsEndpoint, from its
values: interval, scrapeTimeout, honorLabels, relabelings, metricRelabelings.
*/}}
{{- define "ksit-exporter.endpoint" -}}
interval: {{ .interval | default "30s" }}
{{- with .scrapeTimeout }}
scrapeTimeout: {{ . }}
{{- end }}
honorLabels: {{ ne .honorLabels false }}
{{- with .relabelings }}
relabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .metricRelabelings }}
metricRelabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
A monitor endpoint's scheme, TLS and credentials (values.yaml, metricsSecurity): the CA from
the serving certificate's Secret, the name the certificate carries, and the Prometheus's own
service account token when the sidecar checks callers.
*/}}
{{- define "ksit-exporter.endpointSecurity" -}}
{{- with .Values.metricsSecurity }}
{{- if .tlsSecret }}
scheme: https
tlsConfig:
  ca:
    secret: { name: {{ .tlsSecret }}, key: ca.crt }
  serverName: ksit-monitor.{{ $.Values.ksit.namespace }}.svc
{{- end }}
{{- if eq .auth "kubernetes" }}
bearerTokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token
{{- end }}
{{- end }}
{{- end }}
