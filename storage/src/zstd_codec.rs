//! zstd for `compressed-blobs/zstd/` ByteStream resources: streaming
//! compression of reads, and decompression of writes bounded by the size
//! the digest declares, so a small upload cannot expand into a huge
//! buffer (a "zip bomb") before verification refuses it.

use std::io;

use zstd::stream::raw::{Decoder, Encoder, Operation, OutBuffer};

/// Compression level for reads: zstd's default trades well on build
/// outputs (object files, archives) at far above network speed.
const LEVEL: i32 = 3;

/// Working buffer per call.
const BUFFER_BYTES: usize = 128 * 1024;

fn stalled() -> io::Error {
    io::Error::other("zstd made no progress")
}

/// Compresses a blob chunk by chunk into one zstd frame.
pub struct Compressor {
    encoder: Encoder<'static>,
    buffer: Vec<u8>,
}

impl Compressor {
    pub fn new() -> io::Result<Compressor> {
        Ok(Compressor {
            encoder: Encoder::new(LEVEL)?,
            buffer: vec![0; BUFFER_BYTES],
        })
    }

    /// Compresses `input`; returns the output ready so far (may be empty).
    pub fn push(&mut self, mut input: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        while !input.is_empty() {
            let status = self.encoder.run_on_buffers(input, &mut self.buffer)?;
            if status.bytes_read == 0 && status.bytes_written == 0 {
                return Err(stalled());
            }
            out.extend_from_slice(&self.buffer[..status.bytes_written]);
            input = &input[status.bytes_read..];
        }
        Ok(out)
    }

    /// Ends the frame; returns the remaining output.
    pub fn finish(&mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let mut buffer = OutBuffer::around(&mut self.buffer[..]);
            let remaining = self.encoder.finish(&mut buffer, true)?;
            let written = buffer.pos();
            out.extend_from_slice(&self.buffer[..written]);
            if remaining == 0 {
                return Ok(out);
            }
            if written == 0 {
                return Err(stalled());
            }
        }
    }
}

/// Decompresses an upload chunk by chunk.
pub struct Decompressor {
    decoder: Decoder<'static>,
    buffer: Vec<u8>,
    /// zstd's hint from the last call: 0 once a frame is complete.
    pending: usize,
    /// Bytes of output still allowed.
    allowance: u64,
}

/// Why an upload's zstd stream is refused.
#[derive(Debug, thiserror::Error)]
pub enum DecompressError {
    #[error("the zstd stream is corrupt")]
    Corrupt(#[source] io::Error),
    #[error("the zstd stream expands past the declared size of {declared} bytes")]
    TooLong { declared: u64 },
    #[error("the zstd stream ends in the middle of a frame")]
    Truncated,
}

impl Decompressor {
    /// A decompressor for a blob that must expand to exactly
    /// `declared` bytes.
    pub fn new(declared: u64) -> io::Result<Decompressor> {
        Ok(Decompressor {
            decoder: Decoder::new()?,
            buffer: vec![0; BUFFER_BYTES],
            pending: 0,
            allowance: declared,
        })
    }

    /// Decompresses `input`; returns the output it yields.
    pub fn push(&mut self, mut input: &[u8], declared: u64) -> Result<Vec<u8>, DecompressError> {
        let mut out = Vec::new();
        loop {
            let status = self
                .decoder
                .run_on_buffers(input, &mut self.buffer)
                .map_err(DecompressError::Corrupt)?;
            self.pending = status.remaining;
            let written = status.bytes_written as u64;
            if written > self.allowance {
                return Err(DecompressError::TooLong { declared });
            }
            self.allowance -= written;
            out.extend_from_slice(&self.buffer[..status.bytes_written]);
            input = &input[status.bytes_read..];
            // Done when the input is used up and the decoder did not fill
            // the buffer (a full buffer may hide more output).
            if input.is_empty() && status.bytes_written < self.buffer.len() {
                return Ok(out);
            }
            if status.bytes_read == 0 && status.bytes_written == 0 {
                return Err(DecompressError::Corrupt(stalled()));
            }
        }
    }

    /// Checks the stream ended on a frame boundary.
    pub fn finish(&self) -> Result<(), DecompressError> {
        if self.pending == 0 {
            Ok(())
        } else {
            Err(DecompressError::Truncated)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compress(data: &[u8], chunk: usize) -> Vec<u8> {
        let mut c = Compressor::new().unwrap();
        let mut out = Vec::new();
        for piece in data.chunks(chunk.max(1)) {
            out.extend(c.push(piece).unwrap());
        }
        out.extend(c.finish().unwrap());
        out
    }

    fn data() -> Vec<u8> {
        (0..500_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    #[test]
    fn chunked_compression_round_trips_through_chunked_decompression() {
        let data = data();
        let packed = compress(&data, 70_000);
        assert!(packed.len() < data.len() / 4, "{}", packed.len());
        let declared = data.len() as u64;
        let mut d = Decompressor::new(declared).unwrap();
        let mut out = Vec::new();
        for piece in packed.chunks(1000) {
            out.extend(d.push(piece, declared).unwrap());
        }
        d.finish().unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn the_whole_stream_agrees_with_zstds_one_shot_decoder() {
        let data = data();
        let packed = compress(&data, 4096);
        assert_eq!(zstd::stream::decode_all(packed.as_slice()).unwrap(), data);
    }

    #[test]
    fn a_bomb_stops_at_the_declared_size() {
        let zeros = vec![0u8; 64 << 20];
        let packed = compress(&zeros, 1 << 20);
        assert!(packed.len() < 64 << 10);
        let mut d = Decompressor::new(1000).unwrap();
        let err = d.push(&packed, 1000).unwrap_err();
        assert!(
            matches!(err, DecompressError::TooLong { declared: 1000 }),
            "{err}"
        );
    }

    #[test]
    fn truncated_and_garbage_streams_are_refused() {
        let data = data();
        let packed = compress(&data, 1 << 20);
        let declared = data.len() as u64;
        let mut d = Decompressor::new(declared).unwrap();
        d.push(&packed[..packed.len() / 2], declared).unwrap();
        assert!(matches!(d.finish(), Err(DecompressError::Truncated)));
        let mut d = Decompressor::new(10).unwrap();
        assert!(d.push(b"definitely not zstd", 10).is_err());
    }
}
