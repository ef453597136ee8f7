"""Dataset import: MSD, nnU-Net v2, DICOM studies with RTSTRUCT/SEG labels and NIfTI folders -> one datalist.

``clinseg import SRC DEST`` (:func:`pipeline.datasets.importer.import_dataset`) writes ``DEST/dataset.json``
(named channels, label names, a patient-level split and its folds) and ``DEST/import_report.json`` (cases taken,
skipped and why, structures missing per patient). Images stay where they are unless they must be converted.
"""
