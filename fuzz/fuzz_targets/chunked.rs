//! Fuzz `h1::ChunkedDecoder`: the same verdict, body bytes, consumed length and end state
//! whether the input arrives whole or split in two or three pieces at fuzzer-chosen offsets.
#![no_main]

use gateway::h1::{ChunkError, ChunkedDecoder};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    result: Result<(), ChunkError>,
    body: Vec<u8>,
    consumed: usize,
    done: bool,
}

fn decode(pieces: &[&[u8]]) -> Outcome {
    let mut d = ChunkedDecoder::new();
    let mut body = Vec::new();
    let mut consumed = 0;
    for piece in pieces {
        match d.decode(piece, |s| body.extend_from_slice(s)) {
            Ok(n) => {
                assert!(n <= piece.len());
                consumed += n;
                if d.is_done() {
                    break;
                }
                assert_eq!(n, piece.len(), "stopped early without being done");
            }
            Err(e) => {
                // How much was consumed before the error depends on the split: not compared.
                return Outcome {
                    result: Err(e),
                    body,
                    consumed: 0,
                    done: false,
                };
            }
        }
    }
    if d.is_done() {
        assert_eq!(d.total(), body.len() as u64);
    }
    Outcome {
        result: Ok(()),
        body,
        consumed,
        done: d.is_done(),
    }
}

fuzz_target!(|data: &[u8]| {
    let [a, b, input @ ..] = data else { return };
    let i = usize::from(*a) * input.len() / 255;
    let j = i + usize::from(*b) * (input.len() - i) / 255;
    let whole = decode(&[input]);
    assert_eq!(whole, decode(&[&input[..i], &input[i..]]), "split at {i}");
    assert_eq!(
        whole,
        decode(&[&input[..i], &input[i..j], &input[j..]]),
        "split at {i}, {j}"
    );
});
