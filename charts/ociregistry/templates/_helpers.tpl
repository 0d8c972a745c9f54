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

{{/* The image fields in force, as JSON: the first non-empty of (1) the
override given (nodeConfig.image, tests.image), (2) the reference chart's
image.ociregistry, (3) image. Call with (list $ override). */}}
{{- define "ociregistry.imageValues" -}}
{{- $root := index . 0 }}
{{- $i := dict }}
{{- range $layer := list (index . 1 | default dict) (($root.Values.image).ociregistry | default dict) $root.Values.image }}
{{- range $k, $v := $layer }}
{{- if and (ne $k "ociregistry") (not (get $i $k)) (not (kindIs "invalid" $v)) (ne (toString $v) "") }}
{{- $_ := set $i $k $v }}
{{- end }}
{{- end }}
{{- end }}
{{- $repo := printf "%s/%s" ($i.registry | default "") $i.repository | trimPrefix "/" }}
{{- if or (eq $repo "quay.io/appzygy/ociregistry") (eq $repo "appzygy/ociregistry") }}
{{- fail (printf "image: %s is the reference (Go) server's image; this chart runs this project's image, whose command line and configuration differ. Set image.registry/image.repository/image.tag to this project's image (deploy/Dockerfile), and drop image.ociregistry" $repo) }}
{{- end }}
{{- toJson $i }}
{{- end }}

{{/* An image reference from imageValues: registry/repository:tag@digest, the
tag defaulting to the chart's appVersion. Call with (list $ override). */}}
{{- define "ociregistry.imageOf" -}}
{{- $root := index . 0 }}
{{- $i := include "ociregistry.imageValues" . | fromJson }}
{{- $ref := $i.repository }}
{{- if $i.registry }}{{ $ref = printf "%s/%s" $i.registry $i.repository }}{{ end }}
{{- $tag := $i.tag | default $root.Chart.AppVersion | toString }}
{{- if $i.digest }}
{{- if $i.tag }}{{ printf "%s:%s@%s" $ref $tag $i.digest }}{{ else }}{{ printf "%s@%s" $ref $i.digest }}{{ end }}
{{- else }}
{{- printf "%s:%s" $ref $tag }}
{{- end }}
{{- end }}

{{- define "ociregistry.pullPolicyOf" -}}
{{- (include "ociregistry.imageValues" . | fromJson).pullPolicy | default "IfNotPresent" }}
{{- end }}

{{/* The server's image. */}}
{{- define "ociregistry.image" -}}
{{- include "ociregistry.imageOf" (list . dict) }}
{{- end }}

{{/* The configuration the user gave, as YAML: serverConfig.configuration, with
what the reference chart's older versions (ociregistry-helm 1.0-1.5) set
elsewhere: configs.{logLevel,port,imagePath,pullTimeout} and
upstreamConfig.registries (its tls.insecure_skip_verify spelled the server's way). */}}
{{- define "ociregistry.configuration" -}}
{{- $cfg := deepCopy (.Values.serverConfig.configuration | default dict) }}
{{- $old := .Values.configs | default dict }}
{{- range $k := list "logLevel" "port" "imagePath" "pullTimeout" }}
{{- $v := get $old $k }}
{{- if and (not (kindIs "invalid" $v)) (ne (toString $v) "") }}
{{- if has $k (list "port" "pullTimeout") }}{{ $v = int $v }}{{ end }}
{{- $_ := set $cfg $k $v }}
{{- end }}
{{- end }}
{{- with (.Values.upstreamConfig | default dict).registries }}
{{- $regs := list }}
{{- range . }}
{{- $r := deepCopy . }}
{{- if and (kindIs "map" $r.tls) (hasKey $r.tls "insecure_skip_verify") }}
{{- $_ := set $r.tls "insecureSkipVerify" (get $r.tls "insecure_skip_verify") }}
{{- $_ := unset $r.tls "insecure_skip_verify" }}
{{- end }}
{{- $regs = append $regs $r }}
{{- end }}
{{- $_ := set $cfg "registries" (concat ($cfg.registries | default list) $regs) }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/* Where the configuration ConfigMap is mounted: serverConfig.mountPath, or
the older reference chart's upstreamConfig.mountPath / configs.configPath. */}}
{{- define "ociregistry.configMountPath" -}}
{{- coalesce (.Values.upstreamConfig | default dict).mountPath (.Values.configs | default dict).configPath .Values.serverConfig.mountPath }}
{{- end }}

{{/* The server's configuration file: what the user gave (ociregistry.configuration),
plus the keys the chart owns, taken from their values (health.port,
metrics.port, admin.port, serverTls, storage.s3, the emptyDir's size). */}}
{{- define "ociregistry.config" -}}
{{- $cfg := include "ociregistry.configuration" . | fromYaml }}
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
{{- if (.Values.upstreamAuth | default dict).dockerConfigSecret }}
{{- if hasKey $cfg "dockerConfig" }}
{{- fail "upstreamAuth.dockerConfigSecret and serverConfig.configuration.dockerConfig are both set: give the Docker config one way" }}
{{- end }}
{{- $_ := set $cfg "dockerConfig" "/var/ociregistry/docker/config.json" }}
{{- end }}
{{- if hasKey $cfg "storage" }}
{{- fail "serverConfig.configuration.storage: configure the bucket with the chart's storage.s3 values instead (the chart hands the server its credentials and CA and writes storage itself)" }}
{{- end }}
{{- if include "ociregistry.s3" . }}
{{- $_ := set $cfg "storage" (dict "s3" (include "ociregistry.s3Config" . | fromYaml)) }}
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

{{/* The health and metrics ports. The reference chart let
serverConfig.configuration.health / .metrics set them (its health.port and
metrics.port default to empty); here too, a port given there is the port, in
place of health.port / metrics.port (NOTES.txt names the value to use instead). */}}
{{- define "ociregistry.healthPort" -}}
{{- $port := (.Values.serverConfig.configuration | default dict).health | default .Values.health.port }}
{{- if not $port }}
{{- fail "health.port is required: the liveness and readiness probes use it" }}
{{- end }}
{{- int $port }}
{{- end }}

{{- define "ociregistry.metricsPort" -}}
{{- $port := (.Values.serverConfig.configuration | default dict).metrics | default .Values.metrics.port }}
{{- if $port }}{{ int $port }}{{ end }}
{{- end }}

{{/* The admin port: admin.port, or serverConfig.configuration.admin; both set, they must agree. */}}
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

{{/* A size as the server reads it (cacheSize, minFreeDisk, localCacheSize):
whole bytes, or a whole number with B, KiB, MiB, GiB, TiB, kB, KB, MB, GB, TB;
in bytes, as digits. Call with (list "what it is" value). */}}
{{- define "ociregistry.serverSizeBytes" -}}
{{- $what := index . 0 }}
{{- $s := index . 1 }}
{{- if or (kindIs "float64" $s) (kindIs "int" $s) (kindIs "int64" $s) }}
{{- $s = printf "%d" (int64 $s) }}
{{- end }}
{{- $s = toString $s | trim }}
{{- $units := dict "" 1 "B" 1 "KiB" 1024 "MiB" 1048576 "GiB" 1073741824 "TiB" 1099511627776 "kB" 1000 "KB" 1000 "MB" 1000000 "GB" 1000000000 "TB" 1000000000000 }}
{{- $re := "^([0-9]+) *(B|KiB|MiB|GiB|TiB|kB|KB|MB|GB|TB)?$" }}
{{- if not (regexMatch $re $s) }}
{{- fail (printf "%s: %q is not a size like 1536MiB (a whole number with B, KiB, MiB, GiB, TiB, kB, MB, GB or TB)" $what $s) }}
{{- end }}
{{- $n := regexReplaceAll "^0+([0-9])" (regexReplaceAll $re $s "${1}") "${1}" }}
{{- printf "%d" (int64 (mul (atoi $n) (index $units (regexReplaceAll $re $s "${2}")))) }}
{{- end }}

{{/* The cacheSize the chart writes into the configuration, as YAML; empty:
none (a cacheSize the user gave is left as it is). With the emptyDir and a
sizeLimit, the kubelet evicts the pod, and the cache with it, once the volume
passes the limit: a cacheSize.max the user gave must stay within 90% of it
(downloads in flight and the index use the volume too), and without one the
chart writes max 75% and target 65% of the limit. PVC and hostPath: nothing.
With storage.s3 neither: the emptyDir only stages downloads, and a cacheSize
would act on the bucket, which the sizeLimit says nothing about. */}}
{{- define "ociregistry.cacheSize" -}}
{{- $cfg := .Values.serverConfig.configuration | default dict }}
{{- $limit := .Values.persistence.emptyDir.sizeLimit }}
{{- if and (eq (include "ociregistry.cacheVolume" .) "emptyDir") $limit (not (include "ociregistry.s3" .)) }}
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
{{- (include "ociregistry.configuration" . | fromYaml).port | default 8080 | int }}
{{- end }}

{{- define "ociregistry.imagePath" -}}
{{- (include "ociregistry.configuration" . | fromYaml).imagePath | default "/var/lib/ociregistry" }}
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
{{- with .Values.observability.serviceMonitor.port }}
{{- if ne . "metrics" }}
{{- fail (printf "observability.serviceMonitor.port (%s): the ServiceMonitor scrapes the metrics Service's port, which is named metrics; drop the value (it is the reference chart's)" .) }}
{{- end }}
{{- end }}
{{- if and (eq .Values.kind "DaemonSet") $p.persistentVolumeClaim.enabled }}
{{- fail "kind: DaemonSet cannot keep its cache in persistence.persistentVolumeClaim: one claim cannot be mounted by a pod on every node. Use persistence.hostPath (a cache on each node) or the emptyDir" }}
{{- end }}
{{- $replicas := int (.Values.replicaCount | default 1) }}
{{- if and (gt $replicas 1) (or $p.persistentVolumeClaim.enabled $p.hostPath.enabled) }}
{{- fail (printf "replicaCount (%d) with persistence.%s: each replica stages its downloads in a directory of its own, and a claim or a node's directory would be shared by several (an existing claim, or a ReadWriteOnce one, cannot even follow them to other nodes). Use the emptyDir (the cache itself is in storage.s3)" $replicas (ternary "persistentVolumeClaim" "hostPath" $p.persistentVolumeClaim.enabled)) }}
{{- end }}
{{- $pdb := .Values.podDisruptionBudget | default dict }}
{{- if and (gt $replicas 1) $pdb.enabled (kindIs "invalid" $pdb.maxUnavailable) (not (kindIs "string" $pdb.minAvailable)) (ge (int $pdb.minAvailable) $replicas) }}
{{- fail (printf "podDisruptionBudget.minAvailable (%d) must be below replicaCount (%d): otherwise no replica may ever be evicted, and node drains hang" (int $pdb.minAvailable) $replicas) }}
{{- end }}
{{- with (.Values.storage | default dict).s3 }}
{{- if and (.caSecret | default dict).name (.caConfigMap | default dict).name }}
{{- fail "storage.s3.caSecret and storage.s3.caConfigMap are both set: give the endpoint's CA one way" }}
{{- end }}
{{- if and (include "ociregistry.s3CaFrom" $) .insecureSkipVerify }}
{{- fail "storage.s3: a CA (caSecret or caConfigMap) and insecureSkipVerify are both set: verify the endpoint's certificate with the CA, or do not verify it" }}
{{- end }}
{{- end }}
{{- if include "ociregistry.peers" . }}
{{- $peer := include "ociregistry.peerPort" . }}
{{- if or (eq $peer $data) (eq $peer $health) (eq $peer $metrics) (eq $peer $admin) }}
{{- fail (printf "storage.s3.peers.port (%s) must differ from the data port (%s), health.port (%s), metrics.port (%s) and admin.port (%s)" $peer $data $health ($metrics | default "none") ($admin | default "none")) }}
{{- end }}
{{- if and (.Values.storage.s3.peers.networkPolicy | default dict).enabled .Values.hostNetwork }}
{{- fail "storage.s3.peers.networkPolicy with hostNetwork: NetworkPolicies do not apply to pods in the node's network, so the peer port would stay open to whatever reaches the node. Turn hostNetwork off, or keep the peer port off untrusted networks another way (its token is still required)" }}
{{- end }}
{{- end }}
{{- with include "ociregistry.localCacheSize" . }}
{{- $local := include "ociregistry.serverSizeBytes" (list "storage.s3.localCacheSize" .) | atoi }}
{{- if lt $local 1 }}
{{- fail (printf "storage.s3.localCacheSize (%s) must be more than 0; leave it empty for no local tier" .) }}
{{- end }}
{{- $limit := $p.emptyDir.sizeLimit }}
{{- if and (eq (include "ociregistry.cacheVolume" $) "emptyDir") $limit }}
{{- $limitBytes := include "ociregistry.quantityBytes" (list "persistence.emptyDir.sizeLimit" $limit) | atoi }}
{{- $ceiling := div (mul $limitBytes 90) 100 }}
{{- if gt $local $ceiling }}
{{- $shownLimit := $limit }}
{{- if not (kindIs "string" $shownLimit) }}{{ $shownLimit = printf "%d" (int64 $shownLimit) }}{{ end }}
{{- fail (printf "storage.s3.localCacheSize (%s = %d bytes) is above 90%% of persistence.emptyDir.sizeLimit (%v = %d bytes, 90%% = %d bytes): the local tier shares the emptyDir with the downloads being staged, and the kubelet evicts the pod once the emptyDir passes its sizeLimit. Lower localCacheSize to at most %dMiB, or raise sizeLimit" . $local $shownLimit $limitBytes $ceiling (div $ceiling 1048576)) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and (eq .Values.service.internalTrafficPolicy "Local") (ne .Values.kind "DaemonSet") }}
{{- fail "service.internalTrafficPolicy: Local sends each pod only to a mirror on its own node; with kind: Deployment (one pod) pods on every other node would reach none. Use kind: DaemonSet, or leave internalTrafficPolicy empty" }}
{{- end }}
{{- if and .Values.hostNetwork .Values.hostPort (ne (int .Values.hostPort) (int $data)) }}
{{- fail (printf "hostPort (%v) with hostNetwork: the pod's ports are the node's, so the data port is %s: set serverConfig.configuration.port instead of hostPort" .Values.hostPort $data) }}
{{- end }}
{{- $grace := (.Values.serverConfig.configuration | default dict).shutdownGracePeriod | default "30s" | toString }}
{{- $secs := 0 }}
{{- if regexMatch "^[0-9]+s$" $grace }}{{ $secs = trimSuffix "s" $grace | int }}{{ end }}
{{- if regexMatch "^[0-9]+m$" $grace }}{{ $secs = mul (trimSuffix "m" $grace | int) 60 }}{{ end }}
{{- if le (int .Values.terminationGracePeriodSeconds) $secs }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be above serverConfig.configuration.shutdownGracePeriod (%s), or Kubernetes kills the server before it finishes draining" .Values.terminationGracePeriodSeconds $grace) }}
{{- end }}
{{- end }}

{{/* Whether the mirror is a DaemonSet (a pod on every node) rather than a Deployment. */}}
{{- define "ociregistry.isDaemonSet" -}}
{{- if eq .Values.kind "DaemonSet" }}true{{ end }}
{{- end }}

{{/* Whether the cache is in a bucket (storage.s3.bucket). */}}
{{- define "ociregistry.s3" -}}
{{- if ((.Values.storage | default dict).s3 | default dict).bucket }}true{{ end }}
{{- end }}

{{/* Where the bucket endpoint's CA comes from: "secret", "configMap", or
nothing (none given, or no bucket). */}}
{{- define "ociregistry.s3CaFrom" -}}
{{- $s3 := (.Values.storage | default dict).s3 | default dict }}
{{- if include "ociregistry.s3" . }}
{{- if ($s3.caSecret | default dict).name }}secret{{ else if ($s3.caConfigMap | default dict).name }}configMap{{ end }}
{{- end }}
{{- end }}

{{/* The directory the bucket endpoint's CA is mounted in (as ca.crt). */}}
{{- define "ociregistry.s3CaDir" -}}/var/ociregistry/s3-ca{{- end }}

{{/* The variables holding the bucket's keys, from storage.s3.existingSecret.
Not AWS_*: the AWS chain would then take them as the pod's identity for ECR
upstreams too; not OCIREGISTRY_*: those set configuration keys. */}}
{{- define "ociregistry.s3KeyIdVar" -}}S3_ACCESS_KEY_ID{{- end }}
{{- define "ociregistry.s3SecretVar" -}}S3_SECRET_ACCESS_KEY{{- end }}

{{/* The server's storage.s3, as YAML, from the chart's storage.s3 values. */}}
{{- define "ociregistry.s3Config" -}}
{{- $s3 := .Values.storage.s3 }}
{{- $out := dict "bucket" (toString $s3.bucket) "pathStyle" ($s3.pathStyle | default false) }}
{{- range $k := list "prefix" "endpoint" "region" }}
{{- with get $s3 $k }}{{ $_ := set $out $k (toString .) }}{{ end }}
{{- end }}
{{- if $s3.existingSecret }}
{{- $_ := set $out "accessKeyIdFromEnv" (include "ociregistry.s3KeyIdVar" .) }}
{{- $_ := set $out "secretAccessKeyFromEnv" (include "ociregistry.s3SecretVar" .) }}
{{- end }}
{{- $tls := dict }}
{{- if include "ociregistry.s3CaFrom" . }}
{{- $_ := set $tls "ca" (printf "%s/ca.crt" (include "ociregistry.s3CaDir" .)) }}
{{- end }}
{{- if $s3.insecureSkipVerify }}
{{- $_ := set $tls "insecureSkipVerify" true }}
{{- end }}
{{- if $tls }}
{{- $_ := set $out "tls" $tls }}
{{- end }}
{{- with include "ociregistry.localCacheSize" . }}
{{- $_ := set $out "localCacheSize" . }}
{{- end }}
{{- /* Only when on: the server's default is off. */}}
{{- if $s3.redirect }}
{{- $_ := set $out "redirect" true }}
{{- end }}
{{- if include "ociregistry.peers" . }}
{{- /* No advertise here: each pod gives its own address in
OCIREGISTRY_STORAGE__S3__PEERS__ADVERTISE, which the server lays over the file. */}}
{{- $_ := set $out "peers" (dict "port" (include "ociregistry.peerPort" . | atoi) "tokenFromEnv" (include "ociregistry.peerTokenVar" .)) }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/* storage.s3.localCacheSize as the configuration gets it (a string, as the
server reads it); empty: none. */}}
{{- define "ociregistry.localCacheSize" -}}
{{- $v := (((.Values.storage | default dict).s3 | default dict).localCacheSize) }}
{{- if and (include "ociregistry.s3" .) (not (kindIs "invalid" $v)) }}
{{- if or (kindIs "float64" $v) (kindIs "int" $v) (kindIs "int64" $v) }}{{ $v = printf "%d" (int64 $v) }}{{ end }}
{{- toString $v | trim }}
{{- end }}
{{- end }}

{{/* Whether replicas stream downloads in progress to each other: a bucket and
storage.s3.peers.enabled. */}}
{{- define "ociregistry.peers" -}}
{{- $peers := ((.Values.storage | default dict).s3 | default dict).peers | default dict }}
{{- if and (include "ociregistry.s3" .) $peers.enabled }}true{{ end }}
{{- end }}

{{- define "ociregistry.peerPort" -}}
{{- int (.Values.storage.s3.peers.port | default 5003) }}
{{- end }}

{{/* The variable holding the replicas' shared token (storage.s3.peers.tokenFromEnv).
Not OCIREGISTRY_*: those set configuration keys. */}}
{{- define "ociregistry.peerTokenVar" -}}PEER_TOKEN{{- end }}

{{/* The Secret holding the peer token: storage.s3.peers.tokenSecret.name, or
the one the chart generates (peers.yaml). */}}
{{- define "ociregistry.peerTokenSecret" -}}
{{- (.Values.storage.s3.peers.tokenSecret | default dict).name | default (printf "%s-peer-token" (include "ociregistry.fullname" .)) }}
{{- end }}

{{- define "ociregistry.peerTokenKey" -}}
{{- if (.Values.storage.s3.peers.tokenSecret | default dict).name }}
{{- .Values.storage.s3.peers.tokenSecret.key | default "token" }}
{{- else }}token{{ end }}
{{- end }}

{{/* The URL the other replicas reach this pod at, as an env value the
kubelet expands ($(POD_IP)). */}}
{{- define "ociregistry.peerAdvertise" -}}
{{- .Values.storage.s3.peers.advertise | default (printf "http://$(POD_IP):%s" (include "ociregistry.peerPort" .)) }}
{{- end }}

{{/* The pod's affinity: the user's, and with several replicas a preferred
anti-affinity that puts them on different nodes (so a lost node takes one
replica, not all; preferred, so a one-node cluster still runs them all),
unless the user's affinity has a podAntiAffinity of its own. As YAML. */}}
{{- define "ociregistry.affinity" -}}
{{- $affinity := deepCopy (.Values.affinity | default dict) }}
{{- if and (not (include "ociregistry.isDaemonSet" .)) (gt (int (.Values.replicaCount | default 1)) 1) (not $affinity.podAntiAffinity) }}
{{- $term := dict "topologyKey" "kubernetes.io/hostname" "labelSelector" (dict "matchLabels" (include "ociregistry.selectorLabels" . | fromYaml)) }}
{{- $_ := set $affinity "podAntiAffinity" (dict "preferredDuringSchedulingIgnoredDuringExecution" (list (dict "weight" 100 "podAffinityTerm" $term))) }}
{{- end }}
{{- if $affinity }}{{ toYaml $affinity }}{{ end }}
{{- end }}

{{/* Whether the cache is a PVC that pods on two nodes cannot mount at once:
every access mode but ReadWriteMany. An existing claim's modes are unknown
here, so it counts as one. */}}
{{- define "ociregistry.singleNodeClaim" -}}
{{- $pvc := .Values.persistence.persistentVolumeClaim }}
{{- if $pvc.enabled }}
{{- if or $pvc.existingClaimName (not (has "ReadWriteMany" ($pvc.newClaimSpec.accessModes | default list))) }}true{{ end }}
{{- end }}
{{- end }}

{{/* The Deployment's strategy (see deploymentStrategy in values.yaml). A
bucket (storage.s3) with the emptyDir leaves nothing that ties a pod to a node,
so it rolls. */}}
{{- define "ociregistry.deploymentStrategy" -}}
{{- if .Values.deploymentStrategy }}
{{- toYaml .Values.deploymentStrategy }}
{{- else if and (gt (int (.Values.replicaCount | default 1)) 1) (or .Values.hostPort .Values.hostNetwork) }}
type: RollingUpdate
rollingUpdate:
  maxUnavailable: 1
  maxSurge: 0
{{- else if or (include "ociregistry.singleNodeClaim" .) .Values.hostPort .Values.hostNetwork }}
type: Recreate
{{- else }}
type: RollingUpdate
rollingUpdate:
  maxUnavailable: 0
  maxSurge: 1
{{- end }}
{{- end }}

{{- define "ociregistry.daemonSetUpdateStrategy" -}}
{{- if .Values.daemonSetUpdateStrategy }}
{{- toYaml .Values.daemonSetUpdateStrategy }}
{{- else }}
type: RollingUpdate
rollingUpdate:
  maxUnavailable: 1
  maxSurge: 0
{{- end }}
{{- end }}

{{/* The server's uid:gid, which the hostPath cache directory is given to. */}}
{{- define "ociregistry.serverOwner" -}}
{{- $c := .Values.securityContext | default dict }}
{{- $p := .Values.podSecurityContext | default dict }}
{{- printf "%d:%d" (int (coalesce $c.runAsUser $p.runAsUser 65532)) (int (coalesce $c.runAsGroup $p.runAsGroup 65532)) }}
{{- end }}

{{/* extraVolumes, and the reference chart's volumes. */}}
{{- define "ociregistry.extraVolumes" -}}
{{- toYaml (concat (.Values.extraVolumes | default list) (.Values.volumes | default list)) }}
{{- end }}

{{/* extraVolumeMounts, and the reference chart's volumeMounts without its
mount of the cache volume ("images"), which the chart makes itself at imagePath. */}}
{{- define "ociregistry.extraVolumeMounts" -}}
{{- $mounts := .Values.extraVolumeMounts | default list }}
{{- range .Values.volumeMounts | default list }}
{{- if ne .name "images" }}{{ $mounts = append $mounts . }}{{ end }}
{{- end }}
{{- toYaml $mounts }}
{{- end }}

{{/* The reference chart's values this release uses, one line each: what it
is, and the value of this chart to use instead. For NOTES.txt. */}}
{{- define "ociregistry.aliasesUsed" -}}
{{- $cfg := .Values.serverConfig.configuration | default dict }}
{{- if (.Values.image).ociregistry }}
- image.ociregistry.*: use image.* (registry, repository, tag, digest, pullPolicy)
{{- end }}
{{- if .Values.volumes }}
- volumes: use extraVolumes
{{- end }}
{{- if .Values.volumeMounts }}
- volumeMounts: use extraVolumeMounts (the cache mount "images" is the chart's own, at serverConfig.configuration.imagePath; a volumeMounts entry named images is ignored)
{{- end }}
{{- if .Values.extraManifests }}
- extraManifests: use extraObjects
{{- end }}
{{- if $cfg.health }}
- serverConfig.configuration.health ({{ $cfg.health }}): use health.port (the configuration's value is used, in place of health.port)
{{- end }}
{{- if $cfg.metrics }}
- serverConfig.configuration.metrics ({{ $cfg.metrics }}): use metrics.port (the configuration's value is used, in place of metrics.port)
{{- end }}
{{- if .Values.observability.serviceMonitor.port }}
- observability.serviceMonitor.port: not needed (the ServiceMonitor scrapes the port named metrics)
{{- end }}
{{- range $k, $v := .Values.configs | default dict }}
{{- if and (not (kindIs "invalid" $v)) (ne (toString $v) "") }}
- configs.{{ $k }}: use {{ ternary "serverConfig.mountPath" (printf "serverConfig.configuration.%s" $k) (eq $k "configPath") }}
{{- end }}
{{- end }}
{{- range $k, $v := .Values.upstreamConfig | default dict }}
- upstreamConfig.{{ $k }}: use {{ ternary "serverConfig.mountPath" (printf "serverConfig.configuration.%s" $k) (eq $k "mountPath") }}
{{- end }}
{{- end }}

{{/* ---- Node configuration (nodeConfig) ---- */}}

{{/* Where the node's / is mounted in the node-configuration pods (hosts-toml --root). */}}
{{- define "ociregistry.nodeRoot" -}}/host{{- end }}

{{/* The mirror's URL as the nodes reach it: nodeConfig.mirror, or derived
(see nodeConfig.mirror in values.yaml). */}}
{{- define "ociregistry.nodeMirror" -}}
{{- $nc := .Values.nodeConfig }}
{{- $scheme := ternary "https" "http" .Values.serverTls.enabled }}
{{- if $nc.mirror }}
{{- $nc.mirror }}
{{- else if and (include "ociregistry.isDaemonSet" .) (or .Values.hostPort .Values.hostNetwork) }}
{{- printf "%s://127.0.0.1:%d" $scheme (int (.Values.hostPort | default (include "ociregistry.dataPort" .))) }}
{{- else if and (ne .Values.service.type "ClusterIP") .Values.service.nodePort }}
{{- printf "%s://127.0.0.1:%d" $scheme (int .Values.service.nodePort) }}
{{- else }}
{{- fail "nodeConfig.mirror: give the mirror's URL as the nodes reach it (e.g. http://10.0.0.5:31080). The chart derives it only from a NodePort or LoadBalancer Service with service.nodePort set, or, with kind: DaemonSet, from hostPort or hostNetwork: containerd runs on the node, outside the cluster's DNS" }}
{{- end }}
{{- end }}

{{/* The node directories the node-configuration pods write (or read), as a
YAML list of {path, readOnly}: containerd's config directory and its hosts
directory (one mount when one holds the other), or /etc/rancher/<k3s|rke2>. */}}
{{- define "ociregistry.nodeDirs" -}}
{{- $nc := .Values.nodeConfig }}
{{- $dirs := list }}
{{- if eq $nc.format "containerd" }}
{{- $hosts := trimSuffix "/" $nc.hostsDir }}
{{- $config := dir ($nc.containerdConfig | default "/etc/containerd/config.toml") }}
{{- if or (eq $hosts $config) (hasPrefix (printf "%s/" $config) $hosts) }}
{{- $dirs = list (dict "path" $config "readOnly" false) }}
{{- else if hasPrefix (printf "%s/" $hosts) $config }}
{{- $dirs = list (dict "path" $hosts "readOnly" false) }}
{{- else }}
{{- $dirs = list (dict "path" $config "readOnly" true) (dict "path" $hosts "readOnly" false) }}
{{- end }}
{{- else }}
{{- $dirs = list (dict "path" (printf "/etc/rancher/%s" $nc.format) "readOnly" false) }}
{{- end }}
{{- toYaml $dirs }}
{{- end }}

{{/* The hostPath volumes and mounts of those directories, under nodeRoot.
Call with (list $ "volumes"|"mounts"). */}}
{{- define "ociregistry.nodeVolumes" -}}
{{- $root := index . 0 }}
{{- range include "ociregistry.nodeDirs" $root | fromYamlArray }}
{{- $name := printf "node%s" (regexReplaceAll "[^a-z0-9]+" (lower .path) "-") | trunc 63 | trimSuffix "-" }}
{{- if eq (index $ 1) "volumes" }}
- name: {{ $name }}
  hostPath:
    path: {{ .path }}
    type: DirectoryOrCreate
{{- else }}
- name: {{ $name }}
  mountPath: {{ include "ociregistry.nodeRoot" $root }}{{ .path }}
  {{- if .readOnly }}
  readOnly: true
  {{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The arguments of `ociregistry hosts-toml` for the node-configuration pods.
Call with (list $ "write"|"remove" stayRunning): --write (the DaemonSet) or
--remove (the uninstall hook), with --stay-running for a long-running container.
Paths are the node's (hosts-toml resolves them under --root), except
--containerd-config, which hosts-toml reads as given. */}}
{{- define "ociregistry.hostsTomlArgs" -}}
{{- $root := index . 0 }}
{{- $action := index . 1 }}
{{- $nc := $root.Values.nodeConfig }}
{{- $args := list "hosts-toml" "--format" $nc.format "--root" (include "ociregistry.nodeRoot" $root) }}
{{- if eq $action "write" }}
{{- $args = concat $args (list "--mirror" (include "ociregistry.nodeMirror" $root)) }}
{{- end }}
{{- if eq $nc.format "containerd" }}
{{- $args = concat $args (list "--hosts-dir" (trimSuffix "/" $nc.hostsDir)) }}
{{- with $nc.containerdConfig }}
{{- $args = concat $args (list "--containerd-config" (printf "%s%s" (include "ociregistry.nodeRoot" $root) .)) }}
{{- end }}
{{- end }}
{{- with $nc.registries }}
{{- $args = concat $args (list "--registry" (join "," .)) }}
{{- end }}
{{- if eq $action "write" }}
{{- if not $nc.fallback }}{{ $args = append $args "--no-fallback" }}{{ end }}
{{- with $nc.ca }}{{ $args = concat $args (list "--ca" .) }}{{ end }}
{{- if $nc.insecure }}{{ $args = append $args "--insecure" }}{{ end }}
{{- end }}
{{- $args = append $args (printf "--%s" $action) }}
{{- if index . 2 }}{{ $args = append $args "--stay-running" }}{{ end }}
{{- toYaml $args }}
{{- end }}

{{/* Checks of nodeConfig; included by its DaemonSet. */}}
{{- define "ociregistry.validateNodeConfig" -}}
{{- $nc := .Values.nodeConfig }}
{{- $mirror := include "ociregistry.nodeMirror" . }}
{{- if and $nc.ca $nc.insecure }}
{{- fail "nodeConfig.ca and nodeConfig.insecure are both set: verify the mirror's certificate with the CA, or do not verify it" }}
{{- end }}
{{- if and .Values.serverTls.enabled (eq .Values.serverTls.clientAuth "verify") (not $nc.mirror) }}
{{- fail "nodeConfig with serverTls.clientAuth verify: the mirror asks the nodes for a client certificate, and ociregistry hosts-toml cannot write one into the nodes' configuration yet. Configure the nodes by hand (README.md, TLS), or give nodeConfig.mirror an address that does not ask for one" }}
{{- end }}
{{- if and (or $nc.ca $nc.insecure) (hasPrefix "http://" $mirror) }}
{{- fail (printf "nodeConfig.%s applies to an https:// mirror; the mirror is %s" (ternary "ca" "insecure" (not (empty $nc.ca))) $mirror) }}
{{- end }}
{{- end }}

{{/* Labels of the node-configuration pods and the helm test Pod: their own
app.kubernetes.io/name, so the mirror's Services (which select on name and
instance) never send traffic to them. Call with (list $ "node-config"). */}}
{{- define "ociregistry.componentSelectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ printf "%s-%s" (include "ociregistry.name" $root) (index . 1) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "ociregistry.componentLabels" -}}
{{- $root := index . 0 -}}
helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "ociregistry.componentSelectorLabels" . }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
{{- end }}
