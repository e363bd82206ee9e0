"""Kubernetes mutating admission webhook that adds the sidecar to pods that opt in.

``spec`` says what is injected and when (one YAML file, rendered by the Helm chart),
``mutate`` turns a pod into a JSONPatch (pure, no I/O), ``review`` wraps it in the
``admission.k8s.io/v1`` AdmissionReview protocol, ``tls`` keeps the serving certificate
fresh, ``server`` is the HTTPS endpoint and ``cli`` the ``sidecar inject`` command.
"""
