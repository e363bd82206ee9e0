{{/* Names, labels, images, and the pieces shared by the webhook's spec and the hand-injection snippet. */}}

{{- define "sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sidecar.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "sidecar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sidecar.labels" -}}
helm.sh/chart: {{ include "sidecar.chart" . }}
{{ include "sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sidecar
{{- end -}}

{{- define "sidecar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "sidecar.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "sidecar.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "sidecar.sidecarImage" -}}
{{- $repo := default .Values.image.repository .Values.sidecar.image.repository -}}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) .Values.sidecar.image.tag -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}

{{- define "sidecar.tlsSecretName" -}}
{{- printf "%s-tls" (include "sidecar.fullname" .) -}}
{{- end -}}

{{- define "sidecar.serviceDNSNames" -}}
{{- $svc := include "sidecar.fullname" . -}}
{{- $ns := .Release.Namespace -}}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) | toJson -}}
{{- end -}}

{{/* The key under which the webhook reads opt-in/opt-out, and the label it sets. */}}
{{- define "sidecar.injectKey" -}}
{{- printf "%s/inject" .Values.injection.annotationPrefix -}}
{{- end -}}

{{/*
A sidecar setting as the text of its SIDECAR_* variable: booleans as true/false, the rest as
written (the sidecar's own parser validates it). Same rule as sidecar.inject.spec.setting_text.
*/}}
{{- define "sidecar.settingText" -}}
{{- if kindIs "bool" . -}}{{- ternary "true" "false" . -}}
{{- else if kindIs "invalid" . -}}
{{- else -}}{{- toString . | trim -}}
{{- end -}}
{{- end -}}

{{/*
Bytes of a size written like the sidecar's settings ("2GiB", "512Mi", "10G", "1048576"):
IEC units are powers of 1024, SI units powers of 1000. Same rule as sidecar.config.parse_size.
*/}}
{{- define "sidecar.bytes" -}}
{{- $s := include "sidecar.settingText" . -}}
{{- if not (regexMatch "^[0-9]+(\\.[0-9]+)?\\s*[a-zA-Z]*$" $s) -}}
{{- fail (printf "sidecar.settings.cache_size: %q is not a byte size such as 2GiB" $s) -}}
{{- end -}}
{{- $num := regexFind "^[0-9]+(\\.[0-9]+)?" $s -}}
{{- $unit := regexReplaceAll "^[0-9]+(\\.[0-9]+)?\\s*" $s "" | lower -}}
{{- $units := dict "" 1 "b" 1 "k" 1000 "kb" 1000 "m" 1000000 "mb" 1000000 "g" 1000000000 "gb" 1000000000 "t" 1000000000000 "tb" 1000000000000 "ki" 1024 "kib" 1024 "mi" 1048576 "mib" 1048576 "gi" 1073741824 "gib" 1073741824 "ti" 1099511627776 "tib" 1099511627776 -}}
{{- if not (hasKey $units $unit) -}}
{{- fail (printf "sidecar.settings.cache_size: unknown unit %q in %q" $unit $s) -}}
{{- end -}}
{{- printf "%.0f" (floor (mulf (float64 $num) (index $units $unit))) -}}
{{- end -}}

{{/* Size of the cache volume as a quantity: cache_size x (1 + headroom), rounded up to MiB (as mutate.quantity). */}}
{{- define "sidecar.cacheVolumeSize" -}}
{{- $bytes := float64 (include "sidecar.bytes" .Values.sidecar.settings.cache_size) -}}
{{- $vol := ceil (divf (mulf $bytes (add 100 .Values.sidecar.cacheVolume.headroomPercent)) 100) -}}
{{- $mib := int64 (max 1 (ceil (divf $vol 1048576))) -}}
{{- if eq (mod $mib 1024) 0 -}}{{- printf "%dGi" (div $mib 1024) -}}{{- else -}}{{- printf "%dMi" $mib -}}{{- end -}}
{{- end -}}

{{/* The inject spec the webhook reads (sidecar/inject/spec.py), as YAML. */}}
{{- define "sidecar.injectSpec" -}}
{{- $s := .Values.sidecar -}}
{{- $cv := $s.cacheVolume -}}
{{- $spec := dict
  "annotationPrefix" .Values.injection.annotationPrefix
  "requirePodOptIn" (ne .Values.injection.optIn "namespace")
  "containerName" $s.containerName
  "image" (include "sidecar.sidecarImage" .)
  "imagePullPolicy" $s.image.pullPolicy
  "nativeSidecar" $s.nativeSidecar
  "port" $s.port
  "adminPort" $s.adminPort
  "settings" $s.settings
  "resources" $s.resources
  "securityContext" $s.securityContext
  "startupProbe" $s.startupProbe
  "readinessProbe" $s.readinessProbe
  "livenessProbe" $s.livenessProbe
  "cacheVolume" (dict "type" $cv.type "medium" $cv.medium "storageClassName" $cv.storageClassName "headroomPercent" $cv.headroomPercent "requestEphemeralStorage" $cv.requestEphemeralStorage)
  "tmpSizeLimit" $s.tmpSizeLimit
  "hostNetwork" $s.hostNetwork.mode
  "hostNetworkPort" $s.hostNetwork.port
  "hostNetworkAdminPort" $s.hostNetwork.adminPort
  "copyAwsCredentials" $s.copyAwsCredentials
  "credentialVolumeMounts" $s.credentialVolumeMounts
  "extraEnv" $s.extraEnv
  "sharedTier" (default (dict) $s.sharedTier)
-}}
{{- toYaml $spec -}}
{{- end -}}

{{/*
The container the webhook injects into a pod that has no AWS credentials of its own to copy
(sidecar/inject/mutate.py:_container). A test checks the two stay identical.
*/}}
{{- define "sidecar.injectedContainer" -}}
{{- $s := .Values.sidecar -}}
{{- $size := include "sidecar.cacheVolumeSize" . -}}
{{- $env := list
  (dict "name" "SIDECAR_LISTEN" "value" (printf "127.0.0.1:%v" $s.port))
  (dict "name" "SIDECAR_ADMIN_LISTEN" "value" (printf "0.0.0.0:%v" $s.adminPort))
  (dict "name" "SIDECAR_CACHE_DIR" "value" "/var/cache/sidecar")
-}}
{{- range $k, $v := $s.settings -}}
{{- $env = append $env (dict "name" (printf "SIDECAR_%s" (upper $k)) "value" (include "sidecar.settingText" $v)) -}}
{{- end -}}
{{- $env = concat $env $s.extraEnv -}}
{{- $tier := default (dict) $s.sharedTier -}}
{{- $mounts := list (dict "name" (printf "%s-cache" $s.containerName) "mountPath" "/var/cache/sidecar") (dict "name" (printf "%s-tmp" $s.containerName) "mountPath" "/tmp") -}}
{{- if $tier.location -}}
{{- $env = append $env (dict "name" "SIDECAR_SHARED_TIER" "value" $tier.location) -}}
{{- if $tier.endpoint -}}{{- $env = append $env (dict "name" "SIDECAR_SHARED_TIER_ENDPOINT" "value" $tier.endpoint) -}}{{- end -}}
{{- if $tier.region -}}{{- $env = append $env (dict "name" "SIDECAR_SHARED_TIER_REGION" "value" $tier.region) -}}{{- end -}}
{{- if $tier.secretName -}}
{{- $env = append $env (dict "name" "SIDECAR_SHARED_TIER_CREDENTIALS_FILE" "value" "/var/run/sidecar/shared-tier/credentials") -}}
{{- if $tier.hmacKey -}}{{- $env = append $env (dict "name" "SIDECAR_SHARED_TIER_HMAC_KEY_FILE" "value" "/var/run/sidecar/shared-tier/hmac-key") -}}{{- end -}}
{{- $mounts = append $mounts (dict "name" (printf "%s-tier" $s.containerName) "mountPath" "/var/run/sidecar/shared-tier" "readOnly" true) -}}
{{- end -}}
{{- end -}}
{{- $resources := deepCopy $s.resources -}}
{{- if and (eq $s.cacheVolume.type "emptyDir") (not $s.cacheVolume.medium) $s.cacheVolume.requestEphemeralStorage -}}
{{- $requests := default (dict) (get $resources "requests") -}}
{{- if not (hasKey $requests "ephemeral-storage") -}}{{- $_ := set $requests "ephemeral-storage" $size -}}{{- end -}}
{{- $_ := set $resources "requests" $requests -}}
{{- end -}}
{{- $c := dict
  "name" $s.containerName
  "image" (include "sidecar.sidecarImage" .)
  "imagePullPolicy" $s.image.pullPolicy
  "command" (list "sidecar")
  "args" (list "serve")
  "env" $env
  "ports" (list (dict "name" "sidecar-admin" "containerPort" $s.adminPort "protocol" "TCP"))
  "resources" $resources
  "securityContext" $s.securityContext
  "startupProbe" $s.startupProbe
  "readinessProbe" $s.readinessProbe
  "livenessProbe" $s.livenessProbe
  "volumeMounts" $mounts
  "terminationMessagePolicy" "FallbackToLogsOnError"
-}}
{{- if $s.nativeSidecar -}}{{- $_ := set $c "restartPolicy" "Always" -}}{{- end -}}
{{- toYaml $c -}}
{{- end -}}

{{/* The cache volume the webhook adds (mutate._cache_volume), for the snippet. */}}
{{- define "sidecar.cacheVolume" -}}
{{- $s := .Values.sidecar -}}
{{- $size := include "sidecar.cacheVolumeSize" . -}}
{{- $name := printf "%s-cache" $s.containerName -}}
{{- if eq $s.cacheVolume.type "ephemeral" -}}
{{- $claim := dict "accessModes" (list "ReadWriteOnce") "resources" (dict "requests" (dict "storage" $size)) -}}
{{- if $s.cacheVolume.storageClassName -}}{{- $_ := set $claim "storageClassName" $s.cacheVolume.storageClassName -}}{{- end -}}
{{- toYaml (dict "name" $name "ephemeral" (dict "volumeClaimTemplate" (dict "metadata" (dict "labels" (dict (printf "%s/injected" .Values.injection.annotationPrefix) "true")) "spec" $claim))) -}}
{{- else -}}
{{- $ed := dict "sizeLimit" $size -}}
{{- if $s.cacheVolume.medium -}}{{- $_ := set $ed "medium" $s.cacheVolume.medium -}}{{- end -}}
{{- toYaml (dict "name" $name "emptyDir" $ed) -}}
{{- end -}}
{{- end -}}
