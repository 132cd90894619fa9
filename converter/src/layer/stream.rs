//! Byte plumbing for the layer pipeline: choosing the decompressor for a layer blob, and a
//! bounded pipe carrying the content stream from the tar-scanning thread to the chunker.

use std::io::{self, Chain, Cursor, Read, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// Layer media types we convert (OCI and Docker, distributable or not).
const LAYER_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

/// Whether `media_type` is a layer type the converter handles.
pub fn is_layer_media_type(media_type: &str) -> bool {
    LAYER_MEDIA_TYPES.contains(&media_type)
}

/// Wraps `blob` in the decompressor its magic bytes call for (gzip, zstd, or none). Like
/// containerd's `DecompressStream`, the bytes decide rather than the media type, because
/// registries and tools do mislabel layers.
pub fn decompress<'a, R: Read + 'a>(mut blob: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut magic = [0u8; 4];
    let mut n = 0;
    while n < magic.len() {
        match blob.read(&mut magic[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let whole: Chain<Cursor<Vec<u8>>, R> = Cursor::new(magic[..n].to_vec()).chain(blob);
    Ok(match &magic[..n] {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(whole)),
        [0x28, 0xb5, 0x2f, 0xfd] => Box::new(zstd::stream::read::Decoder::new(whole)?),
        _ => Box::new(whole),
    })
}

/// Size of the buffers sent through the pipe.
const PIPE_BUF: usize = 1 << 20;
/// Buffers in flight: bounds the pipe's memory to about `PIPE_DEPTH * PIPE_BUF`.
const PIPE_DEPTH: usize = 4;

/// Creates the bounded content pipe.
pub fn pipe() -> (PipeWriter, PipeReader) {
    let (tx, rx) = sync_channel(PIPE_DEPTH);
    (
        PipeWriter {
            tx,
            buf: Vec::with_capacity(PIPE_BUF),
        },
        PipeReader {
            rx,
            cur: Vec::new(),
            pos: 0,
            failed: false,
        },
    )
}

/// Marker sent when the writer side failed, so the reader reports an error instead of EOF.
type Msg = Result<Vec<u8>, ()>;

/// The writing end; call [`PipeWriter::finish`] on success or [`PipeWriter::fail`] on error.
pub struct PipeWriter {
    tx: SyncSender<Msg>,
    buf: Vec<u8>,
}

impl PipeWriter {
    fn send(&mut self, msg: Msg) -> io::Result<()> {
        self.tx.send(msg).map_err(|_| {
            io::Error::new(io::ErrorKind::BrokenPipe, "content stream reader went away")
        })
    }

    /// Sends what is buffered; dropping afterwards signals EOF.
    pub fn finish(mut self) -> io::Result<()> {
        self.flush()
    }

    /// Tells the reader that the stream is broken (it then fails instead of seeing EOF).
    pub fn fail(mut self) {
        let _ = self.send(Err(()));
    }
}

impl Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(PIPE_BUF - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == PIPE_BUF {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(PIPE_BUF));
        self.send(Ok(full))
    }
}

/// The reading end.
pub struct PipeReader {
    rx: Receiver<Msg>,
    cur: Vec<u8>,
    pos: usize,
    failed: bool,
}

impl PipeReader {
    /// Whether the writer reported a failure.
    pub fn writer_failed(&self) -> bool {
        self.failed
    }
}

impl Read for PipeReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(buf)) => (self.cur, self.pos) = (buf, 0),
                Ok(Err(())) => {
                    self.failed = true;
                    return Err(io::Error::other("the tar scanner failed"));
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipe_carries_bytes_and_failure() {
        let (mut w, mut r) = pipe();
        let data: Vec<u8> = (0..3 * PIPE_BUF + 5).map(|i| i as u8).collect();
        let out = std::thread::scope(|s| {
            s.spawn(move || {
                w.write_all(&data[..]).unwrap();
                w.finish().unwrap();
            });
            let mut out = Vec::new();
            r.read_to_end(&mut out).unwrap();
            out
        });
        assert_eq!(out.len(), 3 * PIPE_BUF + 5);
        assert!(out.iter().enumerate().all(|(i, b)| *b == i as u8));

        let (mut w, mut r) = pipe();
        w.write_all(b"abc").unwrap();
        w.flush().unwrap();
        w.fail();
        let mut out = Vec::new();
        assert!(r.read_to_end(&mut out).is_err());
        assert!(r.writer_failed());
    }

    #[test]
    fn decompress_sniffs_magic() {
        use std::io::Write as _;
        let plain = b"hello tar".to_vec();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        let zs = zstd::bulk::compress(&plain, 3).unwrap();
        for blob in [plain.clone(), gz, zs, b"ab".to_vec()] {
            let mut out = Vec::new();
            decompress(blob.as_slice())
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            let expect = if blob == b"ab" {
                b"ab".to_vec()
            } else {
                plain.clone()
            };
            assert_eq!(out, expect);
        }
        assert!(is_layer_media_type(
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        ));
        assert!(!is_layer_media_type(
            "application/vnd.oci.image.config.v1+json"
        ));
    }
}
