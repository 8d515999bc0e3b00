"""Ray: the embedded local head and the job client; deployment files (images, cluster configs)."""
