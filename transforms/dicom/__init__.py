"""DICOM series: discovery from headers, slice sorting and geometry checks, fast pixel reading."""
