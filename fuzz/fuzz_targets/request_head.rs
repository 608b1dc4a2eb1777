//! Fuzz `h1::parse_request`: never panics; when it accepts, the framing decision agrees with
//! the header lines, trailing bytes do not change the verdict, and no prefix of the head was
//! refused (a read split can never turn a valid request into an error).
#![no_main]

use gateway::h1::{self, Framing, HeadLimits, RequestInfo};
use libfuzzer_sys::fuzz_target;

const LIMITS: HeadLimits = HeadLimits {
    max_head_bytes: 8192,
    max_headers: 64,
    max_target_bytes: 2048,
};

fn parse(data: &[u8]) -> Result<Option<(RequestInfo, usize)>, h1::RequestError> {
    let mut headers = h1::header_slots();
    h1::parse_request(data, &mut headers, &LIMITS).map(|o| o.map(|p| (p.info, p.head_len)))
}

fuzz_target!(|data: &[u8]| {
    let mut headers = h1::header_slots();
    let Ok(Some(p)) = h1::parse_request(data, &mut headers, &LIMITS) else {
        return;
    };
    let info = p.info;
    let head_len = p.head_len;
    assert!(head_len <= data.len() && head_len <= LIMITS.max_head_bytes);
    assert!(data[..head_len].ends_with(b"\r\n\r\n"));
    // Origin-form, or `*` for OPTIONS only (answered by the gateway itself).
    assert!(
        p.target.starts_with('/') || (p.target == "*" && info.method == h1::Method::Options),
        "target {:?}",
        p.target
    );
    assert!(p.target.len() <= LIMITS.max_target_bytes);
    assert!(!p.target.contains('#'));
    assert!(p.headers.len() <= LIMITS.max_headers);
    if info.minor == 1 {
        assert!(p.host.is_some(), "HTTP/1.1 accepted without a Host");
    }
    // Framing must follow from the header lines, and be unambiguous.
    let cls: Vec<&[u8]> = p
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| h.value)
        .collect();
    let tes = p
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
        .count();
    assert!(cls.is_empty() || tes == 0, "CL and TE both accepted");
    let cl_values: Vec<u64> = cls
        .iter()
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|e| h1::parse_content_length(h1::trim_ows(e)).expect("accepted an invalid CL"))
        .collect();
    assert!(
        cl_values.windows(2).all(|w| w[0] == w[1]),
        "differing CLs accepted"
    );
    match info.framing {
        Framing::Chunked => assert!(tes == 1 && info.minor == 1),
        Framing::Length(n) => assert!(n > 0 && cl_values.first() == Some(&n)),
        Framing::None => assert!(tes == 0 && cl_values.iter().all(|&n| n == 0)),
        Framing::UntilClose => panic!("a request is never close-delimited"),
    }
    if info.expect_continue {
        assert!(info.framing != Framing::None && info.minor == 1);
    }
    // Trailing bytes (a body, a pipelined request) do not change the verdict.
    assert_eq!(parse(&data[..head_len]), Ok(Some((info, head_len))));
    // No prefix of an accepted head is refused.
    let step = (head_len / 64).max(1);
    for k in (0..head_len).step_by(step) {
        assert_eq!(parse(&data[..k]), Ok(None), "prefix of {k} bytes refused");
    }
});
