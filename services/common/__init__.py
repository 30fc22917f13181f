"""Code shared by every service: configuration, logging, pseudonymisation, images, HTTP."""
