"""Archives in and out: DICOMweb (QIDO/WADO/STOW-RS) and DIMSE (C-FIND/C-GET/C-MOVE/C-STORE) sources, a verified
local series cache, pushing results back, and the listening Storage SCP (``clinseg serve``).

Case folders of archive inputs are named by hashed UIDs (:func:`pipeline.pacs.cache.case_key`), never by patient
names or IDs.
"""
