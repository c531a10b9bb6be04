{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "kcr.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified release name. */}}
{{- define "kcr.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kcr.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kcr-kernels
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* Selector labels of the gateway pods. */}}
{{- define "kcr.gatewaySelector" -}}
app.kubernetes.io/name: kcr-gateway
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Selector labels of the runner pods (set by the Kubernetes backend). */}}
{{- define "kcr.runnerSelector" -}}
app.kubernetes.io/name: kcr-runner
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kcr.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kcr.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kcr.runnerNamespace" -}}
{{- default .Release.Namespace .Values.runner.namespace -}}
{{- end -}}

{{- define "kcr.authSecretName" -}}
{{- default (printf "%s-auth" (include "kcr.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{/* image reference: repository@digest, else repository:tag (tag defaults to appVersion). */}}
{{- define "kcr.image" -}}
{{- $img := index . 0 -}}
{{- $root := index . 1 -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{/* Chart-level checks that JSON schema cannot express. */}}
{{- define "kcr.validate" -}}
{{- if and (gt (int .Values.gateway.replicas) 1) (not .Values.redis.existingSecret) -}}
{{- fail "gateway.replicas > 1 needs a shared registry: set redis.existingSecret (a Secret holding the Redis URL)" -}}
{{- end -}}
{{- if and (gt (int .Values.gateway.replicas) 1) (not .Values.s3.url) -}}
{{- fail "gateway.replicas > 1 needs a shared file store: set s3.url (s3://bucket/prefix)" -}}
{{- end -}}
{{- end -}}
