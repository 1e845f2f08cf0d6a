"""Pure tensor/array operations shared by stages: path indices, random walk, dense CRF."""
