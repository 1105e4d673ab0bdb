{{/* Names and labels shared by every template of the chart (the monitoring templates use them too). */}}

{{/* The release's base name, kept to 63 characters (a DNS label); "kiln" alone when the release is called kiln. */}}
{{- define "kiln.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The operator's objects: Deployment, Service, ServiceAccount, RBAC. */}}
{{- define "kiln.operatorName" -}}
{{- printf "%s-operator" (include "kiln.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kiln.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kiln.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Selector labels never change after install (a Deployment's selector is immutable). */}}
{{- define "kiln.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "kiln.labels" -}}
{{ include "kiln.selectorLabels" . }}
app.kubernetes.io/part-of: kiln
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* An image reference from a values block {repository, tag, digest}: repository@digest when a digest is
set (the tag is then ignored), else repository:tag, the tag defaulting to the chart's appVersion.
global.imageRegistry (an umbrella chart's mirror) replaces the repository's registry, its first path
component when that is a host (has a dot or a port, or is localhost), else goes in front of it.
Called with (dict "root" $ "image" .Values.image "key" "image"); key names the values in errors. */}}
{{- define "kiln.imageRef" -}}
{{- $image := .image -}}
{{- $repository := required (printf "%s.repository is required" .key) $image.repository -}}
{{- $registry := (.root.Values.global | default dict).imageRegistry | default "" | trimSuffix "/" -}}
{{- if $registry -}}
{{- $parts := splitList "/" $repository -}}
{{- $first := first $parts -}}
{{- if and (gt (len $parts) 1) (or (contains "." $first) (contains ":" $first) (eq $first "localhost")) -}}
{{- $repository = rest $parts | join "/" -}}
{{- end -}}
{{- $repository = printf "%s/%s" $registry $repository -}}
{{- end -}}
{{- with $image.digest -}}
{{- if not (regexMatch "^sha256:[a-f0-9]{64}$" .) -}}
{{- fail (printf "%s.digest must be sha256: and 64 lowercase hex digits, got %q" $.key .) -}}
{{- end -}}
{{- printf "%s@%s" $repository . -}}
{{- else -}}
{{- printf "%s:%s" $repository ($image.tag | default $.root.Chart.AppVersion | toString) -}}
{{- end -}}
{{- end -}}

{{/* The operator's image. */}}
{{- define "kiln.image" -}}
{{- include "kiln.imageRef" (dict "root" . "image" .Values.image "key" "image") -}}
{{- end -}}

{{/* The image of the pods the operator creates (KILN_RUNTIME_IMAGE): runtime.image, a whole reference, wins
when set (how chart 0.1.0 took it); else runtime.repository, .tag and .digest as for the operator. */}}
{{- define "kiln.runtimeImage" -}}
{{- if .Values.runtime.image -}}
{{- .Values.runtime.image -}}
{{- else -}}
{{- include "kiln.imageRef" (dict "root" . "image" .Values.runtime "key" "runtime") -}}
{{- end -}}
{{- end -}}

{{/* Namespaces the operator serves; empty means the whole cluster. */}}
{{- define "kiln.clusterwide" -}}
{{- if not .Values.watchNamespaces }}true{{ end -}}
{{- end -}}
