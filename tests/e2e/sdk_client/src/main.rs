//! The Rust AWS SDK (aws-sdk-s3) as a real S3 client of apgate, for the e2e client matrix
//! (tests/e2e/test_rust_sdk.py).
//!
//! Over a plain `http://` endpoint the SDK sends PutObject/UploadPart bodies as **signed**
//! aws-chunked payloads (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER`, CRC32 trailer), which is
//! exactly what apgate has to verify and re-sign chunk by chunk.
//!
//! Configuration comes from the environment only, and only these variables are read (no default
//! credential chain, no profile files, no IMDS):
//! `ENDPOINT` (e.g. `http://127.0.0.1:PORT`), `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! optional `AWS_REGION` (default `us-east-1`). Path-style addressing, retries disabled.
//!
//! ```text
//! sdk_client put BUCKET KEY FILE
//! sdk_client get BUCKET KEY FILE
//! sdk_client list BUCKET PREFIX
//! sdk_client delete BUCKET KEY
//! sdk_client multipart BUCKET KEY FILE PART_SIZE
//! sdk_client copy BUCKET SRCKEY DSTKEY
//! sdk_client presign-get BUCKET KEY SECONDS
//! ```
//!
//! moto 5.2.1 (the e2e upstream) answers CompleteMultipartUpload with the root element
//! `<CompleteMultipartUploadResponse>` instead of S3's `<CompleteMultipartUploadResult>`; botocore
//! ignores root names, the Rust SDK refuses the response. With `SDK_CLIENT_MOTO_COMPAT=1` an
//! interceptor renames that root element (and only that, only in CompleteMultipartUpload
//! responses) before the SDK parses them; results then carry `"moto_compat_rewrites": N`.
//! Against real S3 it never matches.
//!
//! On success one JSON line goes to stdout. Every result carries `requests`: what the SDK put
//! on the wire for each HTTP request (method, `x-amz-content-sha256`, `content-encoding`,
//! `content-length`, `transfer-encoding`, `x-amz-trailer`), recorded by an interceptor right
//! before transmission. On failure the exit status is 1 and one JSON line
//! `{"error": CODE, "message": ..., "status": HTTP_STATUS}` goes to stderr (exit 2: usage).

use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use aws_sdk_s3::config::interceptors::{
    BeforeDeserializationInterceptorContextMut, BeforeTransmitInterceptorContextRef,
};
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::{BehaviorVersion, ConfigBag, Credentials, Intercept, Region, RuntimeComponents};
use aws_sdk_s3::error::{BoxError, DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::{ByteStream, Length, SdkBody};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::Bytes;
use http_body::{Body, Frame};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Value};

/// S3 `UriEncode` for a copy source: everything but `A-Za-z0-9-._~` and `/`.
const COPY_SOURCE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// A failure to report: S3 error code (or a local category), message, HTTP status if any.
#[derive(Debug)]
struct Failure {
    code: String,
    message: String,
    status: Option<u16>,
}

impl Failure {
    fn local(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
            status: None,
        }
    }
}

impl<E, R> From<SdkError<E, R>> for Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + HasStatus,
{
    fn from(err: SdkError<E, R>) -> Self {
        let status = err.raw_response().and_then(HasStatus::status_code);
        let code = err.code().map(str::to_owned).unwrap_or_else(|| match &err {
            SdkError::ConstructionFailure(_) => "ConstructionFailure".to_owned(),
            SdkError::TimeoutError(_) => "TimeoutError".to_owned(),
            SdkError::DispatchFailure(_) => "DispatchFailure".to_owned(),
            SdkError::ResponseError(_) => "ResponseError".to_owned(),
            _ => "ServiceError".to_owned(),
        });
        let message = err
            .message()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{}", DisplayErrorContext(&err)));
        Self { code, message, status }
    }
}

/// The HTTP status of a raw response, where there is one.
trait HasStatus {
    fn status_code(&self) -> Option<u16>;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> Option<u16> {
        Some(self.status().as_u16())
    }
}

/// Records, for every HTTP request the SDK transmits, the headers that tell how the body is
/// framed and signed.
#[derive(Debug, Default, Clone)]
struct WireRecorder {
    requests: Arc<Mutex<Vec<Value>>>,
}

impl Intercept for WireRecorder {
    fn name(&self) -> &'static str {
        "WireRecorder"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let req = context.request();
        let h = req.headers();
        let entry = json!({
            "method": req.method(),
            "x-amz-content-sha256": h.get("x-amz-content-sha256"),
            "content-encoding": h.get("content-encoding"),
            "content-length": h.get("content-length"),
            "transfer-encoding": h.get("transfer-encoding"),
            "x-amz-trailer": h.get("x-amz-trailer"),
            "x-amz-decoded-content-length": h.get("x-amz-decoded-content-length"),
        });
        if let Ok(mut v) = self.requests.lock() {
            v.push(entry);
        }
        Ok(())
    }
}

impl WireRecorder {
    fn take(&self) -> Vec<Value> {
        self.requests
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

/// The moto compatibility shim described in the module docs.
#[derive(Debug, Default, Clone)]
struct MotoCompleteRootFix {
    rewrites: Arc<AtomicUsize>,
}

impl Intercept for MotoCompleteRootFix {
    fn name(&self) -> &'static str {
        "MotoCompleteRootFix"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // Registered on the CompleteMultipartUpload call only (see `run`).
        if !context.response().status().is_success() {
            return Ok(());
        }
        let body = std::mem::replace(context.response_mut().body_mut(), SdkBody::taken());
        let rewrites = Arc::clone(&self.rewrites);
        *context.response_mut().body_mut() = SdkBody::from_body_1_x(RenameRoot {
            inner: body,
            buf: Vec::new(),
            done: false,
            rewrites,
        });
        Ok(())
    }
}

/// Buffers a (small, XML) body and renames the `CompleteMultipartUploadResponse` root element.
struct RenameRoot {
    inner: SdkBody,
    buf: Vec<u8>,
    done: bool,
    rewrites: Arc<AtomicUsize>,
}

impl Body for RenameRoot {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Poll::Ready(None) => {
                    self.done = true;
                    let text = String::from_utf8_lossy(&self.buf).into_owned();
                    let fixed = text
                        .replacen("<CompleteMultipartUploadResponse", "<CompleteMultipartUploadResult", 1)
                        .replacen(
                            "</CompleteMultipartUploadResponse>",
                            "</CompleteMultipartUploadResult>",
                            1,
                        );
                    if fixed != text {
                        self.rewrites.fetch_add(1, Ordering::Relaxed);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(fixed)))));
                }
            }
        }
    }
}

fn env(name: &str) -> Result<String, Failure> {
    std::env::var(name).map_err(|_| Failure::local("Usage", format!("environment variable {name} is not set")))
}

fn client(recorder: &WireRecorder) -> Result<Client, Failure> {
    let endpoint = env("ENDPOINT")?;
    let access_key = env("AWS_ACCESS_KEY_ID")?;
    let secret_key = env("AWS_SECRET_ACCESS_KEY")?;
    let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".to_owned());
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new(access_key, secret_key, None, None, "sdk_client"))
        .retry_config(RetryConfig::disabled())
        .interceptor(recorder.clone())
        .build();
    Ok(Client::from_conf(config))
}

fn arg<'a>(args: &'a [String], i: usize, what: &str) -> Result<&'a str, Failure> {
    args.get(i)
        .map(String::as_str)
        .ok_or_else(|| Failure::local("Usage", format!("missing argument {what}")))
}

fn file_len(path: &str) -> Result<u64, Failure> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| Failure::local("LocalIo", format!("{path}: {e}")))
}

async fn run(args: &[String], recorder: &WireRecorder, moto_fix: &MotoCompleteRootFix) -> Result<Value, Failure> {
    let cmd = arg(args, 0, "COMMAND")?;
    let s3 = client(recorder)?;
    match cmd {
        "put" => {
            let (bucket, key, file) = (arg(args, 1, "BUCKET")?, arg(args, 2, "KEY")?, arg(args, 3, "FILE")?);
            let body = ByteStream::from_path(Path::new(file))
                .await
                .map_err(|e| Failure::local("LocalIo", format!("{file}: {e}")))?;
            let out = s3.put_object().bucket(bucket).key(key).body(body).send().await?;
            Ok(json!({"op": "put", "key": key, "etag": out.e_tag(), "checksum_crc32": out.checksum_crc32()}))
        }
        "get" => {
            let (bucket, key, file) = (arg(args, 1, "BUCKET")?, arg(args, 2, "KEY")?, arg(args, 3, "FILE")?);
            let out = s3.get_object().bucket(bucket).key(key).send().await?;
            let etag = out.e_tag().map(str::to_owned);
            let data = out
                .body
                .collect()
                .await
                .map_err(|e| Failure::local("ResponseBody", format!("{}", DisplayErrorContext(&e))))?
                .into_bytes();
            std::fs::write(file, &data).map_err(|e| Failure::local("LocalIo", format!("{file}: {e}")))?;
            Ok(json!({"op": "get", "key": key, "bytes": data.len(), "etag": etag}))
        }
        "list" => {
            let (bucket, prefix) = (arg(args, 1, "BUCKET")?, arg(args, 2, "PREFIX")?);
            let mut keys = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let out = s3
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(prefix)
                    .set_continuation_token(token.take())
                    .send()
                    .await?;
                keys.extend(out.contents().iter().filter_map(|o| o.key().map(str::to_owned)));
                match out.next_continuation_token() {
                    Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_owned()),
                    _ => break,
                }
            }
            Ok(json!({"op": "list", "prefix": prefix, "keys": keys}))
        }
        "delete" => {
            let (bucket, key) = (arg(args, 1, "BUCKET")?, arg(args, 2, "KEY")?);
            s3.delete_object().bucket(bucket).key(key).send().await?;
            Ok(json!({"op": "delete", "key": key}))
        }
        "multipart" => {
            let (bucket, key, file) = (arg(args, 1, "BUCKET")?, arg(args, 2, "KEY")?, arg(args, 3, "FILE")?);
            let part_size: u64 = arg(args, 4, "PART_SIZE")?
                .parse()
                .map_err(|_| Failure::local("Usage", "PART_SIZE must be a positive integer"))?;
            if part_size == 0 {
                return Err(Failure::local("Usage", "PART_SIZE must be a positive integer"));
            }
            let total = file_len(file)?;
            let created = s3.create_multipart_upload().bucket(bucket).key(key).send().await?;
            let upload_id = created
                .upload_id()
                .ok_or_else(|| Failure::local("MissingUploadId", "CreateMultipartUpload returned no UploadId"))?
                .to_owned();
            let mut parts = Vec::new();
            let mut offset = 0u64;
            let mut number = 1i32;
            while offset < total || number == 1 {
                let len = part_size.min(total - offset);
                let body = ByteStream::read_from()
                    .path(file)
                    .offset(offset)
                    .length(Length::Exact(len))
                    .build()
                    .await
                    .map_err(|e| Failure::local("LocalIo", format!("{file}: {e}")))?;
                let out = s3
                    .upload_part()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .body(body)
                    .send()
                    .await?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.e_tag().map(str::to_owned))
                        .set_checksum_crc32(out.checksum_crc32().map(str::to_owned))
                        .build(),
                );
                offset += len;
                number += 1;
            }
            let complete = s3
                .complete_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build());
            let done = if std::env::var("SDK_CLIENT_MOTO_COMPAT").is_ok_and(|v| v == "1") {
                complete.customize().interceptor(moto_fix.clone()).send().await?
            } else {
                complete.send().await?
            };
            Ok(json!({"op": "multipart", "key": key, "parts": number - 1, "etag": done.e_tag()}))
        }
        "copy" => {
            let (bucket, src, dst) = (
                arg(args, 1, "BUCKET")?,
                arg(args, 2, "SRCKEY")?,
                arg(args, 3, "DSTKEY")?,
            );
            let source = format!("{bucket}/{}", utf8_percent_encode(src, COPY_SOURCE));
            let out = s3
                .copy_object()
                .bucket(bucket)
                .key(dst)
                .copy_source(source)
                .send()
                .await?;
            let etag = out.copy_object_result().and_then(|r| r.e_tag()).map(str::to_owned);
            Ok(json!({"op": "copy", "source": src, "key": dst, "etag": etag}))
        }
        "presign-get" => {
            let (bucket, key) = (arg(args, 1, "BUCKET")?, arg(args, 2, "KEY")?);
            let secs: u64 = arg(args, 3, "SECONDS")?
                .parse()
                .map_err(|_| Failure::local("Usage", "SECONDS must be an integer"))?;
            let cfg = PresigningConfig::expires_in(Duration::from_secs(secs))
                .map_err(|e| Failure::local("Usage", format!("{}", DisplayErrorContext(&e))))?;
            let req = s3.get_object().bucket(bucket).key(key).presigned(cfg).await?;
            Ok(json!({"op": "presign-get", "key": key, "url": req.uri()}))
        }
        other => Err(Failure::local("Usage", format!("unknown command {other}"))),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let recorder = WireRecorder::default();
    let moto_fix = MotoCompleteRootFix::default();
    match run(&args, &recorder, &moto_fix).await {
        Ok(mut result) => {
            if let Value::Object(map) = &mut result {
                map.insert("requests".to_owned(), Value::Array(recorder.take()));
                map.insert(
                    "moto_compat_rewrites".to_owned(),
                    json!(moto_fix.rewrites.load(Ordering::Relaxed)),
                );
            }
            println!("{result}");
            ExitCode::SUCCESS
        }
        Err(f) => {
            let usage = f.code == "Usage";
            eprintln!(
                "{}",
                json!({"error": f.code, "message": f.message, "status": f.status, "requests": recorder.take()})
            );
            if usage {
                eprintln!("usage: sdk_client put|get|list|delete|multipart|copy|presign-get ARGS... (see source)");
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
