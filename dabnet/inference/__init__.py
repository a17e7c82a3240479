"""Image -> labels: `Segmenter`, what a model file is (`spec`), the files predictions are written as; may import
runtimes, data, io, models and util."""
