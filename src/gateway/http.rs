//! One bounded HTTP exchange with a gateway, shared by every dialect: send a built request,
//! read the status, the signature headers and the whole body (capped), and turn transport
//! errors into words without any request data.

/// Largest response body read from a gateway; their answers are a few kilobytes.
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// The raw answer of one HTTP exchange, before a dialect interprets it.
#[derive(Debug)]
pub struct RawResponse {
    /// HTTP status.
    pub status: u16,
    /// The `signature` header.
    pub signature: Option<String>,
    /// The `response-time` header.
    pub response_time: Option<String>,
    /// The `client-id` header.
    pub client_id: Option<String>,
    /// The body, whole.
    pub body: Vec<u8>,
}

/// Sends the request and reads the whole body (bounded), turning transport errors into text.
pub async fn send(req: reqwest::RequestBuilder) -> Result<RawResponse, String> {
    let mut resp = req.send().await.map_err(|e| transport_error(&e))?;
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let signature = header("signature");
    let response_time = header("response-time");
    let client_id = header("client-id");
    let status = resp.status().as_u16();
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport_error(&e))? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(format!("answer larger than {MAX_RESPONSE_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(RawResponse {
        status,
        signature,
        response_time,
        client_id,
        body,
    })
}

pub fn transport_error(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connect error"
    } else if e.is_body() || e.is_decode() {
        "body error"
    } else {
        "transport error"
    };
    // The chain names the cause (refused, reset, TLS) without any request data.
    let mut text = format!("{kind}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
