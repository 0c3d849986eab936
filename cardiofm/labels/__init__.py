"""Site landmark annotations: label maps, and readers/writers for MITK, 3D Slicer, CSV and canonical files."""
