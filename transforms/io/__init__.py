"""Scan I/O: NIfTI files, DICOM folders and in-memory images read to channel-first MetaTensors with RAS affines
(geometry checks, named errors), SimpleITK interop, inspection and conversion, atomic and NIfTI writing."""
