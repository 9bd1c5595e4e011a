"""Plain step logic of the retrain pipeline, with no KFP in it: the components in
`kfp_components.components` are thin wrappers around these functions, so that the logic is tested
(and reused by `kfp_components.outcome` and the benchmarks) without a pipeline runner."""
