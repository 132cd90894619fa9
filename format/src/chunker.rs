//! Content-defined chunking of the content stream with FastCDC 2020 (`fastcdc::v2020`), and the
//! chunker parameters recorded in every layer index so any reader can tell how chunks were cut.

use std::io::Read;

use fastcdc::v2020::{self, Normalization, StreamCDC};

use crate::pb::Chunker;

/// The algorithm name recorded in the index.
pub const ALGORITHM: &str = "fastcdc-2020";

/// Errors from the chunker.
#[derive(Debug, thiserror::Error)]
pub enum ChunkerError {
    #[error("unknown chunking algorithm {0:?} (expected {ALGORITHM:?})")]
    UnknownAlgorithm(String),
    #[error(
        "invalid chunker parameters min={min} avg={avg} max={max} normalization={normalization}: {reason}"
    )]
    InvalidParams {
        min: u32,
        avg: u32,
        max: u32,
        normalization: u32,
        reason: &'static str,
    },
    #[error("reading the content stream: {0}")]
    Io(#[from] std::io::Error),
}

/// FastCDC 2020 parameters (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkerParams {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
    /// Normalization level 0–3.
    pub normalization: u32,
}

impl Default for ChunkerParams {
    /// min 8 KiB, avg 32 KiB, max 128 KiB, normalization 1. Chosen with `make bench`'s sweep
    /// (docs/benchmarks.md): on the Debian security update, 32 KiB moves 10% fewer bytes than
    /// 64 KiB for 1% more on a cold pull; 16 KiB saves another 10% but doubles the chunk count
    /// (store files, index size) and loses more to filesystem block rounding.
    fn default() -> Self {
        Self {
            min: 8 << 10,
            avg: 32 << 10,
            max: 128 << 10,
            normalization: 1,
        }
    }
}

impl ChunkerParams {
    /// Checks the parameters against what FastCDC 2020 supports.
    pub fn validate(&self) -> Result<(), ChunkerError> {
        let (min, avg, max) = (self.min as usize, self.avg as usize, self.max as usize);
        let reason = if !(v2020::MINIMUM_MIN..=v2020::MINIMUM_MAX).contains(&min) {
            Some("min outside 64 B..1 MiB")
        } else if !(v2020::AVERAGE_MIN..=v2020::AVERAGE_MAX).contains(&avg) {
            Some("avg outside 256 B..4 MiB")
        } else if !(v2020::MAXIMUM_MIN..=v2020::MAXIMUM_MAX).contains(&max) {
            Some("max outside 1 KiB..16 MiB")
        } else if min > avg || avg > max {
            Some("need min <= avg <= max")
        } else if min % 2 != 0 || avg % 2 != 0 || max % 2 != 0 {
            Some("sizes must be even")
        } else if self.normalization > 3 {
            Some("normalization must be 0..=3")
        } else {
            None
        };
        match reason {
            None => Ok(()),
            Some(reason) => Err(ChunkerError::InvalidParams {
                min: self.min,
                avg: self.avg,
                max: self.max,
                normalization: self.normalization,
                reason,
            }),
        }
    }

    fn level(&self) -> Normalization {
        match self.normalization {
            0 => Normalization::Level0,
            1 => Normalization::Level1,
            2 => Normalization::Level2,
            _ => Normalization::Level3,
        }
    }
}

impl From<ChunkerParams> for Chunker {
    fn from(p: ChunkerParams) -> Self {
        Chunker {
            algorithm: ALGORITHM.to_owned(),
            min_size: p.min,
            avg_size: p.avg,
            max_size: p.max,
            normalization: p.normalization,
        }
    }
}

impl TryFrom<&Chunker> for ChunkerParams {
    type Error = ChunkerError;
    fn try_from(c: &Chunker) -> Result<Self, ChunkerError> {
        if c.algorithm != ALGORITHM {
            return Err(ChunkerError::UnknownAlgorithm(c.algorithm.clone()));
        }
        let p = Self {
            min: c.min_size,
            avg: c.avg_size,
            max: c.max_size,
            normalization: c.normalization,
        };
        p.validate()?;
        Ok(p)
    }
}

/// Cuts `reader` into chunks and hands each, in stream order, to `on_chunk`. Memory stays at
/// about `params.max` bytes plus the chunk being handed out. Stops at the first error.
pub fn chunk_stream<R, E, F>(reader: R, params: &ChunkerParams, mut on_chunk: F) -> Result<(), E>
where
    R: Read,
    E: From<ChunkerError>,
    F: FnMut(Vec<u8>) -> Result<(), E>,
{
    params.validate()?;
    let cdc = StreamCDC::with_level(
        reader,
        params.min as usize,
        params.avg as usize,
        params.max as usize,
        params.level(),
    );
    for chunk in cdc {
        let chunk = chunk.map_err(|e| ChunkerError::Io(e.into()))?;
        on_chunk(chunk.data)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    }

    fn cut(data: &[u8], params: &ChunkerParams) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        chunk_stream::<_, ChunkerError, _>(data, params, |c| {
            out.push(c);
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn chunks_concatenate_to_input_and_respect_bounds() {
        let params = ChunkerParams {
            min: 1024,
            avg: 4096,
            max: 16384,
            normalization: 1,
        };
        let data = pseudo_random(300_000, 7);
        let chunks = cut(&data, &params);
        assert!(chunks.len() > 20, "{} chunks", chunks.len());
        assert_eq!(chunks.concat(), data);
        for c in &chunks[..chunks.len() - 1] {
            assert!(c.len() >= 1024 && c.len() <= 16384, "{}", c.len());
        }
    }

    #[test]
    fn empty_stream_has_no_chunks() {
        assert!(cut(&[], &ChunkerParams::default()).is_empty());
    }

    #[test]
    fn proto_round_trip_and_validation() {
        let p = ChunkerParams::default();
        let proto = Chunker::from(p);
        assert_eq!(proto.algorithm, "fastcdc-2020");
        assert_eq!(ChunkerParams::try_from(&proto).unwrap(), p);

        let mut other = proto.clone();
        other.algorithm = "rabin".into();
        assert!(matches!(
            ChunkerParams::try_from(&other),
            Err(ChunkerError::UnknownAlgorithm(_))
        ));
        for bad in [
            ChunkerParams { min: 32, ..p },
            ChunkerParams {
                min: 128 << 10,
                ..p
            },
            ChunkerParams { max: 32 << 20, ..p },
            ChunkerParams { avg: 65537, ..p },
            ChunkerParams {
                normalization: 4,
                ..p
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn callback_error_stops_chunking() {
        let data = pseudo_random(200_000, 3);
        let mut n = 0;
        let r = chunk_stream::<_, ChunkerError, _>(
            &data[..],
            &ChunkerParams {
                min: 1024,
                avg: 4096,
                max: 16384,
                normalization: 1,
            },
            |_| {
                n += 1;
                Err(ChunkerError::UnknownAlgorithm("stop".into()))
            },
        );
        assert!(r.is_err());
        assert_eq!(n, 1);
    }
}
