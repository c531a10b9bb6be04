"""Constants shared by the Kubernetes backend tests."""

NAMESPACE = "kcr-runners"
