"""cardiofm: a federated cardiac-CT foundation model, as a Kaapana platform extension."""

__version__ = "0.1.0"
