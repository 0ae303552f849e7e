//! [`HiddenStore`]: the hidden states of every batch between two layers of a layer-major run,
//! kept in memory while they fit in their budget and spilled to an unnamed temporary file
//! (deleted by the OS when the run ends, however it ends) once they don't.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::model::{ModelError, Result};

enum Slot {
    Empty,
    Memory(Tensor),
    /// `len` f32 values at byte `offset` of the spill file.
    Disk {
        offset: u64,
        dims: Vec<usize>,
        dtype: DType,
    },
}

/// One hidden-state tensor per batch, in memory or in the spill file.
pub struct HiddenStore {
    slots: Vec<Slot>,
    /// Byte offset of each batch's place in the spill file, fixed at its first spill (a
    /// batch's states keep their size from layer to layer).
    offsets: Vec<Option<u64>>,
    spill: Option<File>,
    spill_end: u64,
    in_memory: u64,
    budget: u64,
    spilled: u64,
}

impl HiddenStore {
    /// A store for `batches` batches that keeps at most `budget` bytes in memory; spill files
    /// go to `dir` (the system's temporary folder when `None`).
    pub fn new(batches: usize, budget: u64, dir: Option<&Path>) -> Result<Self> {
        let spill = if budget == u64::MAX {
            None
        } else {
            let dir = dir.map_or_else(std::env::temp_dir, Path::to_path_buf);
            Some(tempfile::tempfile_in(&dir).map_err(|e| {
                ModelError::msg(format!(
                    "{}: cannot create a spill file for hidden states: {e}",
                    dir.display()
                ))
            })?)
        };
        Ok(Self {
            slots: (0..batches).map(|_| Slot::Empty).collect(),
            offsets: vec![None; batches],
            spill,
            spill_end: 0,
            in_memory: 0,
            budget,
            spilled: 0,
        })
    }

    /// Stores batch `i`'s hidden states (replacing what was there).
    pub fn put(&mut self, i: usize, x: Tensor) -> Result<()> {
        self.clear(i);
        let bytes = (x.elem_count() * 4) as u64;
        let Some(file) = self
            .spill
            .as_mut()
            .filter(|_| self.in_memory + bytes > self.budget)
        else {
            self.in_memory += bytes;
            self.slots[i] = Slot::Memory(x);
            return Ok(());
        };
        let offset = *self.offsets[i].get_or_insert_with(|| {
            let o = self.spill_end;
            self.spill_end += bytes;
            o
        });
        let (dims, dtype) = (x.dims().to_vec(), x.dtype());
        let values: Vec<f32> = x.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let io = |e: std::io::Error| ModelError::msg(format!("writing the spill file: {e}"));
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        file.write_all(&raw).map_err(io)?;
        self.spilled += bytes;
        self.slots[i] = Slot::Disk {
            offset,
            dims,
            dtype,
        };
        Ok(())
    }

    /// Takes batch `i`'s hidden states out of the store, onto `device`.
    pub fn take(&mut self, i: usize, device: &Device) -> Result<Tensor> {
        match std::mem::replace(&mut self.slots[i], Slot::Empty) {
            Slot::Empty => Err(ModelError::msg(format!(
                "no hidden states stored for batch {i}"
            ))),
            Slot::Memory(x) => {
                self.in_memory -= (x.elem_count() * 4) as u64;
                Ok(x)
            }
            Slot::Disk {
                offset,
                dims,
                dtype,
            } => {
                let file = self.spill.as_mut().expect("spilled batches have a file");
                let len: usize = dims.iter().product();
                let mut raw = vec![0u8; len * 4];
                let io =
                    |e: std::io::Error| ModelError::msg(format!("reading the spill file: {e}"));
                file.seek(SeekFrom::Start(offset)).map_err(io)?;
                file.read_exact(&mut raw).map_err(io)?;
                let values: Vec<f32> = raw
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                Ok(Tensor::from_vec(values, dims, device)?.to_dtype(dtype)?)
            }
        }
    }

    fn clear(&mut self, i: usize) {
        if let Slot::Memory(x) = std::mem::replace(&mut self.slots[i], Slot::Empty) {
            self.in_memory -= (x.elem_count() * 4) as u64;
        }
    }

    /// Bytes written to the spill file so far.
    pub fn spilled_bytes(&self) -> u64 {
        self.spilled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_come_back_unchanged_from_memory_and_from_the_spill_file() {
        let dev = Device::Cpu;
        let a = Tensor::arange(0f32, 12.0, &dev)
            .unwrap()
            .reshape((1, 3, 4))
            .unwrap();
        let b = (Tensor::arange(0f32, 8.0, &dev).unwrap() * 0.5)
            .unwrap()
            .reshape((2, 1, 4))
            .unwrap();
        // Room for `a` only: `b` is spilled.
        let mut store = HiddenStore::new(2, 48, None).unwrap();
        store.put(0, a.clone()).unwrap();
        store.put(1, b.clone()).unwrap();
        assert_eq!(store.spilled_bytes(), 32);
        let same = |x: &Tensor, y: &Tensor| {
            x.dims() == y.dims()
                && x.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                    == y.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        assert!(same(&store.take(1, &dev).unwrap(), &b));
        assert!(same(&store.take(0, &dev).unwrap(), &a));
        assert!(store.take(0, &dev).is_err(), "taken states are gone");
        // A batch spilled again reuses its place in the file.
        store.put(0, a.clone()).unwrap();
        store.put(1, (b.clone() + 1.0).unwrap()).unwrap();
        assert_eq!(store.spilled_bytes(), 64);
        assert!(same(&store.take(1, &dev).unwrap(), &(b + 1.0).unwrap()));
    }
}
