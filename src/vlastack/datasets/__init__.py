"""Zarr trajectory stores, window sampler, statistics, feature cache and converters."""
