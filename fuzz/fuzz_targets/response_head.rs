//! Fuzz `h1::parse_response`: never panics; when it accepts, bodyless statuses have no body,
//! CL/TE are never both honoured, close-delimited bodies are never reusable, and trailing
//! bytes do not change the verdict. The first input byte says whether the request was HEAD.
#![no_main]

use gateway::h1::{self, Framing};
use libfuzzer_sys::fuzz_target;

const MAX_HEAD: usize = 8192;

fuzz_target!(|data: &[u8]| {
    let [flag, buf @ ..] = data else { return };
    let head_request = flag & 1 == 1;
    let mut headers = h1::header_slots();
    let Ok(Some(p)) = h1::parse_response(buf, &mut headers, head_request, MAX_HEAD) else {
        return;
    };
    let info = p.info;
    assert!(info.head_len <= buf.len() && info.head_len <= MAX_HEAD);
    assert!((100..=999).contains(&info.status));
    let bodyless = head_request || info.status < 200 || info.status == 204 || info.status == 304;
    if bodyless {
        assert_eq!(info.framing, Framing::None);
    }
    let has = |n: &str| p.headers.iter().any(|h| h.name.eq_ignore_ascii_case(n));
    assert!(!(has("content-length") && has("transfer-encoding")));
    match info.framing {
        Framing::Length(n) => assert!(n > 0 && p.content_length == Some(n)),
        Framing::Chunked => assert!(has("transfer-encoding")),
        Framing::UntilClose => assert!(!info.reusable && !has("content-length")),
        Framing::None => {}
    }
    let info2 = {
        let mut h2 = h1::header_slots();
        h1::parse_response(&buf[..info.head_len], &mut h2, head_request, MAX_HEAD)
            .map(|o| o.map(|p| p.info))
    };
    assert_eq!(info2, Ok(Some(info)));
});
