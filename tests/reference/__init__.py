"""Reference pipelines the tests and benchmarks compare medseg against (MONAI's full-buffer inferer and dense
inversion, a MONAI bundle's own pipeline run by MONAI's ConfigParser): not part of the medseg package."""
