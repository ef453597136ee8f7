"""Labels: nnU-Net region labels and partial labels (classes a case's reference lacks)."""
