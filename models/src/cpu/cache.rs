//! Key/value cache of a decoder: per layer, K and V preallocated as [b, h_kv, capacity, head_dim]
//! and filled in place, so a decode step copies one position, not the whole history.

use candle_core::{DType, Device, Result, Tensor};

pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
    capacity: usize,
}

impl KvCache {
    /// A cache for `n_layer` layers holding up to `capacity` positions (allocated on first use).
    pub fn new(n_layer: usize, capacity: usize) -> Self {
        KvCache { layers: (0..n_layer).map(|_| None).collect(), len: 0, capacity }
    }

    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets every position (buffers are kept for reuse).
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Keeps the first `len` positions (e.g. a shared prompt prefix) and drops the rest.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Writes k, v [b, h_kv, t, d] of layer `il` at the current position and returns views of all
    /// positions so far, [b, h_kv, len + t, d]. Call [`KvCache::advance`] once all layers are done.
    pub fn append(&mut self, il: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, h, t, d) = k.dims4()?;
        if self.len + t > self.capacity {
            candle_core::bail!("KV cache holds {} positions; {} + {t} do not fit", self.capacity, self.len);
        }
        let slot = &mut self.layers[il];
        let fits = matches!(slot, Some((ck, _)) if ck.dims4()? == (b, h, self.capacity, d) && ck.dtype() == k.dtype());
        if !fits {
            let z = || Tensor::zeros((b, h, self.capacity, d), k.dtype(), k.device());
            let (nk, nv) = (z()?, z()?);
            if let Some((ok, ov)) = slot.as_ref() {
                if self.len > 0 {
                    nk.slice_set(&ok.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                    nv.slice_set(&ov.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                }
            }
            *slot = Some((nk, nv));
        }
        let (ck, cv) = slot.as_ref().unwrap();
        ck.slice_set(&k.contiguous()?, 2, self.len)?;
        cv.slice_set(&v.contiguous()?, 2, self.len)?;
        Ok((ck.narrow(2, 0, self.len + t)?, cv.narrow(2, 0, self.len + t)?))
    }

    /// Marks `t` more positions as filled.
    pub fn advance(&mut self, t: usize) {
        self.len += t;
    }

    /// Bytes the cache will use when full, for a model with these sizes.
    pub fn bytes_needed(n_layer: usize, h_kv: usize, head_dim: usize, capacity: usize, dtype: DType) -> usize {
        2 * n_layer * h_kv * head_dim * capacity * dtype.size_in_bytes()
    }

    pub fn device_of(&self) -> Option<Device> {
        self.layers.iter().flatten().next().map(|(k, _)| k.device().clone())
    }
}
