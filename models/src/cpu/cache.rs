//! Key/value cache of a decoder: per layer, K and V held as [b, h_kv, allocated, head_dim] and
//! filled in place, so a decode step copies one position, not the whole history. The buffers grow
//! by doubling (from 512 positions) up to the capacity, so a short request does not pay for
//! zeroing the whole context.

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
        let need = self.len + t;
        let fits = match slot {
            Some((ck, _)) => {
                let (cb, ch, cap, cd) = ck.dims4()?;
                (cb, ch, cd) == (b, h, d) && cap >= need && ck.dtype() == k.dtype()
            }
            None => false,
        };
        if !fits {
            let current = slot.as_ref().map_or(0, |(ck, _)| ck.dim(2).unwrap_or(0));
            let alloc = need.next_power_of_two().max(512).max(current * 2).min(self.capacity);
            let z = || Tensor::zeros((b, h, alloc, d), k.dtype(), k.device());
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends across several growths keep every position's values; truncation and capacity hold.
    #[test]
    fn growing_cache_keeps_every_position() {
        let dev = Device::Cpu;
        let mut c = KvCache::new(1, 1500);
        let mut all_k = Vec::new();
        let mut pos = 0;
        for t in [7usize, 500, 1, 300, 400, 2] {
            let k = Tensor::arange(pos as f32, (pos + t) as f32, &dev)
                .unwrap()
                .reshape((1, 1, t, 1))
                .unwrap()
                .broadcast_as((1, 2, t, 3))
                .unwrap()
                .contiguous()
                .unwrap();
            let v = (&k * 2.0).unwrap();
            let (ck, cv) = c.append(0, &k, &v).unwrap();
            c.advance(t);
            pos += t;
            all_k.extend((0..t).map(|i| (pos - t + i) as f32));
            assert_eq!(ck.dims4().unwrap(), (1, 2, pos, 3));
            let got: Vec<f32> =
                ck.narrow(1, 1, 1).unwrap().narrow(3, 2, 1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(got, all_k);
            let gv: Vec<f32> =
                cv.narrow(1, 0, 1).unwrap().narrow(3, 0, 1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(gv, all_k.iter().map(|x| x * 2.0).collect::<Vec<_>>());
        }
        assert_eq!(c.len(), 1210);
        let too_many = Tensor::zeros((1, 2, 300, 3), DType::F32, &dev).unwrap();
        assert!(c.append(0, &too_many, &too_many).is_err(), "past the capacity");
        c.truncate(10);
        let one = Tensor::full(-1f32, (1, 2, 1, 3), &dev).unwrap();
        let (ck, _) = c.append(0, &one, &one).unwrap();
        assert_eq!(ck.dims4().unwrap(), (1, 2, 11, 3));
    }
}
