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
{{- $admin := include "ociregistry.adminPort" . }}
{{- if $admin }}
{{- $_ := set $cfg "admin" ($admin | atoi) }}
{{- if ((.Values.admin | default dict).tokenSecret | default dict).name }}
{{- if hasKey $cfg "adminAuth" }}
{{- fail "admin.tokenSecret and serverConfig.configuration.adminAuth are both set: give the token one way (admin.tokenSecret writes adminAuth: {tokenFromEnv: OCIREGISTRY_ADMIN_TOKEN})" }}
{{- end }}
{{- $_ := set $cfg "adminAuth" (dict "tokenFromEnv" "OCIREGISTRY_ADMIN_TOKEN") }}
{{- end }}
{{- end }}
{{- $cacheSize := include "ociregistry.cacheSize" . | fromYaml }}
{{- if $cacheSize }}
{{- $_ := set $cfg "cacheSize" $cacheSize }}
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

{{- define "ociregistry.adminPort" -}}
{{- $fromCfg := (.Values.serverConfig.configuration | default dict).admin }}
{{- $port := (.Values.admin | default dict).port | default $fromCfg }}
{{- if and $fromCfg $port (ne (int $fromCfg) (int $port)) }}
{{- fail (printf "admin.port (%v) and serverConfig.configuration.admin (%v) disagree: set only admin.port" $port $fromCfg) }}
{{- end }}
{{- if $port }}{{ int $port }}{{ end }}
{{- end }}

{{/* Whether the admin API requires a token: admin.tokenSecret, or adminAuth in the configuration. */}}
{{- define "ociregistry.adminHasToken" -}}
{{- if or ((.Values.admin | default dict).tokenSecret | default dict).name (hasKey (.Values.serverConfig.configuration | default dict) "adminAuth") }}true{{ end }}
{{- end }}

{{/* Where the cache lives: emptyDir, persistentVolumeClaim or hostPath (as the Deployment mounts it). */}}
{{- define "ociregistry.cacheVolume" -}}
{{- $p := .Values.persistence }}
{{- if $p.persistentVolumeClaim.enabled }}persistentVolumeClaim{{ else if $p.hostPath.enabled }}hostPath{{ else }}emptyDir{{ end }}
{{- end }}

{{/* A Kubernetes quantity (e.g. persistence.emptyDir.sizeLimit) in bytes, as
digits: plain bytes (2147483648), binary suffixes Ki Mi Gi Ti Pi, decimal
suffixes k M G T P, with at most three decimals (1.5Gi). Anything else fails.
Call with (list "what it is" value). */}}
{{- define "ociregistry.quantityBytes" -}}
{{- $what := index . 0 }}
{{- $q := index . 1 }}
{{- if or (kindIs "float64" $q) (kindIs "int" $q) (kindIs "int64" $q) }}
{{- if ne (float64 (int64 $q)) (float64 $q) }}
{{- fail (printf "%s: %v is not a whole number of bytes; give a quantity like 2Gi" $what $q) }}
{{- end }}
{{- $q = printf "%d" (int64 $q) }}
{{- end }}
{{- $q = toString $q }}
{{- $units := dict "" 1 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "P" 1000000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "Pi" 1125899906842624 }}
{{- $re := "^([0-9]+)(?:[.]([0-9]{1,3}))?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$" }}
{{- if not (regexMatch $re $q) }}
{{- fail (printf "%s: %q is not a Kubernetes quantity this chart can size the cache from: give bytes (2147483648) or a number with Ki, Mi, Gi, Ti, Pi (binary) or k, M, G, T, P (decimal), e.g. 2Gi (not 2GiB or 2GB)" $what $q) }}
{{- end }}
{{- $whole := regexReplaceAll "^0+([0-9])" (regexReplaceAll $re $q "${1}") "${1}" }}
{{- $frac := regexReplaceAll $re $q "${2}" }}
{{- $mult := index $units (regexReplaceAll $re $q "${3}") }}
{{- $bytes := mul (atoi $whole) $mult }}
{{- if $frac }}
{{- $scale := 1 }}
{{- range until (len $frac) }}{{ $scale = mul $scale 10 }}{{ end }}
{{- $bytes = add $bytes (div (mul (atoi (regexReplaceAll "^0+([0-9])" $frac "${1}")) $mult) $scale) }}
{{- end }}
{{- printf "%d" (int64 $bytes) }}
{{- end }}

{{/* A size as the server reads it (cacheSize, minFreeDisk): whole bytes, or a
whole number with B, KiB, MiB, GiB, kB, KB, MB, GB; in bytes, as digits.
Call with (list "what it is" value). */}}
{{- define "ociregistry.serverSizeBytes" -}}
{{- $what := index . 0 }}
{{- $s := index . 1 }}
{{- if or (kindIs "float64" $s) (kindIs "int" $s) (kindIs "int64" $s) }}
{{- $s = printf "%d" (int64 $s) }}
{{- end }}
{{- $s = toString $s | trim }}
{{- $units := dict "" 1 "B" 1 "KiB" 1024 "MiB" 1048576 "GiB" 1073741824 "kB" 1000 "KB" 1000 "MB" 1000000 "GB" 1000000000 }}
{{- $re := "^([0-9]+) *(B|KiB|MiB|GiB|kB|KB|MB|GB)?$" }}
{{- if not (regexMatch $re $s) }}
{{- fail (printf "%s: %q is not a size like 1536MiB (a whole number with B, KiB, MiB, GiB, kB, MB or GB)" $what $s) }}
{{- end }}
{{- $n := regexReplaceAll "^0+([0-9])" (regexReplaceAll $re $s "${1}") "${1}" }}
{{- printf "%d" (int64 (mul (atoi $n) (index $units (regexReplaceAll $re $s "${2}")))) }}
{{- end }}

{{/* The cacheSize the chart writes into the configuration, as YAML; empty:
none (a cacheSize the user gave is left as it is). With the emptyDir and a
sizeLimit, the kubelet evicts the pod, and the cache with it, once the volume
passes the limit: a cacheSize.max the user gave must stay within 90% of it
(downloads in flight and the index use the volume too), and without one the
chart writes max 75% and target 65% of the limit. PVC and hostPath: nothing. */}}
{{- define "ociregistry.cacheSize" -}}
{{- $cfg := .Values.serverConfig.configuration | default dict }}
{{- $limit := .Values.persistence.emptyDir.sizeLimit }}
{{- if and (eq (include "ociregistry.cacheVolume" .) "emptyDir") $limit }}
{{- $limitBytes := include "ociregistry.quantityBytes" (list "persistence.emptyDir.sizeLimit" $limit) | atoi }}
{{- $user := $cfg.cacheSize }}
{{- if $user }}
{{- if hasKey $user "max" }}
{{- $max := include "ociregistry.serverSizeBytes" (list "serverConfig.configuration.cacheSize.max" $user.max) | atoi }}
{{- $ceiling := div (mul $limitBytes 90) 100 }}
{{- if gt $max $ceiling }}
{{- $shown := $user.max }}
{{- if not (kindIs "string" $shown) }}{{ $shown = printf "%d" (int64 $shown) }}{{ end }}
{{- $shownLimit := $limit }}
{{- if not (kindIs "string" $shownLimit) }}{{ $shownLimit = printf "%d" (int64 $shownLimit) }}{{ end }}
{{- fail (printf "serverConfig.configuration.cacheSize.max (%v = %d bytes) is above 90%% of persistence.emptyDir.sizeLimit (%v = %d bytes, 90%% = %d bytes): downloads in flight also use the volume, and the kubelet evicts the pod, losing the cache, once the emptyDir passes its sizeLimit. Lower cacheSize.max to at most %dMiB, raise sizeLimit, or use a persistentVolumeClaim" $shown $max $shownLimit $limitBytes $ceiling (div $ceiling 1048576)) }}
{{- end }}
{{- end }}
{{- else }}
{{- $max := div (mul $limitBytes 75) 100 }}
{{- $target := div (mul $limitBytes 65) 100 }}
{{- if lt $target 1 }}
{{- fail (printf "persistence.emptyDir.sizeLimit (%v) is too small for a cache" $limit) }}
{{- end }}
{{- if ge $target 1048576 }}
max: {{ printf "%dMiB" (div $max 1048576) }}
target: {{ printf "%dMiB" (div $target 1048576) }}
{{- else }}
max: {{ printf "%dB" $max }}
target: {{ printf "%dB" $target }}
{{- end }}
{{- end }}
{{- end }}
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
{{- $admin := include "ociregistry.adminPort" . }}
{{- if and $admin (or (eq $admin $data) (eq $admin $health) (eq $admin $metrics)) }}
{{- fail (printf "admin.port (%s) must differ from the data port (%s), health.port (%s) and metrics.port (%s)" $admin $data $health ($metrics | default "none")) }}
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
