"""clinseg transforms: MONAI dictionary transforms for DICOM/NIfTI loading, CT windowing, CLAHE, augmentation."""
