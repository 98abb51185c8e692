"""Gene stage: gene table → log transform → top-variance genes → tumour/TME subspaces."""
