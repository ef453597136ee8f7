"""What a segmentation is written as: NIfTI masks and probabilities, DICOM SEG, RTSTRUCT (write and read), previews, volumetry."""
