{{/* Names and labels. */}}
{{- define "ociregistry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ociregistry.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ociregistry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ociregistry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ociregistry.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "ociregistry.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "ociregistry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ociregistry.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ociregistry.image" -}}
{{- $i := .Values.image }}
{{- $ref := $i.repository }}
{{- if $i.registry }}{{ $ref = printf "%s/%s" $i.registry $i.repository }}{{ end }}
{{- $tag := .Chart.AppVersion }}
{{- if $i.tag }}{{ $tag = toString $i.tag }}{{ end }}
{{- if $i.digest }}
{{- if $i.tag }}{{ printf "%s:%s@%s" $ref $tag $i.digest }}{{ else }}{{ printf "%s@%s" $ref $i.digest }}{{ end }}
{{- else }}
{{- printf "%s:%s" $ref $tag }}
{{- end }}
{{- end }}

{{/* The server's configuration: the keys the chart owns are taken from their
values (health.port, metrics.port, serverTls); setting them in
serverConfig.configuration too is an error unless the two agree. */}}
{{- define "ociregistry.config" -}}
{{- $cfg := deepCopy (.Values.serverConfig.configuration | default dict) }}
{{- if hasKey $cfg "serverTlsConfig" }}
{{- fail "serverConfig.configuration.serverTlsConfig: configure TLS with the chart's serverTls values instead (the chart mounts the certificate Secret and writes serverTlsConfig itself)" }}
{{- end }}
{{- $health := include "ociregistry.healthPort" . | atoi }}
{{- $_ := set $cfg "health" $health }}
{{- $metrics := include "ociregistry.metricsPort" . }}
{{- if $metrics }}
{{- $_ := set $cfg "metrics" ($metrics | atoi) }}
{{- end }}
{{- if .Values.serverTls.enabled }}
{{- $dir := .Values.serverTls.mountPath }}
{{- $tls := dict "cert" (printf "%s/tls.crt" $dir) "key" (printf "%s/tls.key" $dir) "clientAuth" .Values.serverTls.clientAuth }}
{{- if eq .Values.serverTls.clientAuth "verify" }}
{{- $_ := set $tls "ca" (printf "%s/ca.crt" $dir) }}
{{- end }}
{{- $_ := set $cfg "serverTlsConfig" $tls }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/* A port set both as a chart value and in serverConfig.configuration must agree. */}}
{{- define "ociregistry.healthPort" -}}
{{- $fromCfg := (.Values.serverConfig.configuration | default dict).health }}
{{- $port := .Values.health.port | default $fromCfg }}
{{- if not $port }}
{{- fail "health.port is required: the liveness and readiness probes use it" }}
{{- end }}
{{- if and $fromCfg (ne (int $fromCfg) (int $port)) }}
{{- fail (printf "health.port (%v) and serverConfig.configuration.health (%v) disagree: set only health.port" $port $fromCfg) }}
{{- end }}
{{- int $port }}
{{- end }}

{{- define "ociregistry.metricsPort" -}}
{{- $fromCfg := (.Values.serverConfig.configuration | default dict).metrics }}
{{- $port := .Values.metrics.port | default $fromCfg }}
{{- if and $fromCfg $port (ne (int $fromCfg) (int $port)) }}
{{- fail (printf "metrics.port (%v) and serverConfig.configuration.metrics (%v) disagree: set only metrics.port" $port $fromCfg) }}
{{- end }}
{{- if $port }}{{ int $port }}{{ end }}
{{- end }}

{{- define "ociregistry.dataPort" -}}
{{- (.Values.serverConfig.configuration | default dict).port | default 8080 | int }}
{{- end }}

{{- define "ociregistry.imagePath" -}}
{{- (.Values.serverConfig.configuration | default dict).imagePath | default "/var/lib/ociregistry" }}
{{- end }}

{{- define "ociregistry.tlsSecretName" -}}
{{- .Values.serverTls.secretName | default (printf "%s-tls" (include "ociregistry.fullname" .)) }}
{{- end }}

{{/* Checks that span several values; included by the Deployment. */}}
{{- define "ociregistry.validate" -}}
{{- $p := .Values.persistence }}
{{- if and $p.persistentVolumeClaim.enabled $p.hostPath.enabled }}
{{- fail "persistence: persistentVolumeClaim.enabled and hostPath.enabled are both true; choose one place for the cache" }}
{{- end }}
{{- if not (or $p.persistentVolumeClaim.enabled $p.hostPath.enabled $p.emptyDir.enabled) }}
{{- fail "persistence: enable one of emptyDir, persistentVolumeClaim or hostPath (the root filesystem is read-only, the cache needs a volume)" }}
{{- end }}
{{- if .Values.serverTls.enabled }}
{{- if not .Values.serverTls.secretName }}
{{- if not (and .Values.serverTls.cert .Values.serverTls.key) }}
{{- fail "serverTls.enabled: give serverTls.secretName (an existing Secret with tls.crt, tls.key, ca.crt) or the PEMs: --set-file serverTls.cert=server.crt --set-file serverTls.key=server.key" }}
{{- end }}
{{- if and (eq .Values.serverTls.clientAuth "verify") (not .Values.serverTls.ca) }}
{{- fail "serverTls.clientAuth is verify: give the CA that signs client certificates with --set-file serverTls.ca=ca.crt" }}
{{- end }}
{{- end }}
{{- end }}
{{- $data := include "ociregistry.dataPort" . }}
{{- $health := include "ociregistry.healthPort" . }}
{{- $metrics := include "ociregistry.metricsPort" . }}
{{- if or (eq $data $health) (eq $data $metrics) (eq $health $metrics) }}
{{- fail (printf "the data port (%s), health.port (%s) and metrics.port (%s) must differ" $data $health ($metrics | default "none")) }}
{{- end }}
{{- if and .Values.observability.enabled (not (include "ociregistry.metricsPort" .)) }}
{{- fail "observability.enabled needs a metrics endpoint: set metrics.port (e.g. 9090)" }}
{{- end }}
{{- $grace := (.Values.serverConfig.configuration | default dict).shutdownGracePeriod | default "30s" | toString }}
{{- $secs := 0 }}
{{- if regexMatch "^[0-9]+s$" $grace }}{{ $secs = trimSuffix "s" $grace | int }}{{ end }}
{{- if regexMatch "^[0-9]+m$" $grace }}{{ $secs = mul (trimSuffix "m" $grace | int) 60 }}{{ end }}
{{- if le (int .Values.terminationGracePeriodSeconds) $secs }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be above serverConfig.configuration.shutdownGracePeriod (%s), or Kubernetes kills the server before it finishes draining" .Values.terminationGracePeriodSeconds $grace) }}
{{- end }}
{{- end }}
