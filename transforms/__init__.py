"""clinseg transforms: MONAI array and dictionary transforms, in sub-packages by concern.

- ``io``: scan loading (``LoadScand``) with geometry checks, inspection, atomic and NIfTI writing;
- ``dicom``: series discovery, slice sorting and geometry, pixel reading;
- ``intensity``: CT windows, CLAHE, foreground z-score;
- ``geometry``: stable resampling, registration, neighbouring slices (2.5D);
- ``augment``: spatial/intensity presets and MR artefacts;
- ``labels``: region labels and partial labels.
"""
