//! The guest's side: `wasi:keyvalue`'s host traits (generated in
//! `wasmux-bindings`) on a [`KvCall`], and the interface's errors.
//!
//! The runtime links them for a component that imports them with
//! `keyvalue::Imports::add_to_linker::<CallState, HasSelf<KvCall>>(linker,
//! |state| &mut state.kv)`; a bucket resource's representation is its
//! handle in the [`KvCall`]. Every error is the interface's `error`: no
//! store call traps.

use wasmtime::component::Resource;
use wasmux_bindings::keyvalue::{atomics, batch, store};

use super::{KvCall, KvError};

/// The interface's error for `error`.
pub fn to_wasi(error: KvError) -> store::Error {
    match error {
        KvError::NoSuchStore => store::Error::NoSuchStore,
        KvError::AccessDenied => store::Error::AccessDenied,
        other => store::Error::Other(other.to_string()),
    }
}

impl store::Host for KvCall {
    fn open(&mut self, identifier: String) -> wasmtime::Result<Result<Resource<store::Bucket>, store::Error>> {
        Ok(KvCall::open(self, &identifier).map(Resource::new_own).map_err(to_wasi))
    }
}

impl store::HostBucket for KvCall {
    async fn get(&mut self, bucket: Resource<store::Bucket>, key: String) -> Result<Option<Vec<u8>>, store::Error> {
        KvCall::get(self, bucket.rep(), &key).await.map_err(to_wasi)
    }

    async fn set(&mut self, bucket: Resource<store::Bucket>, key: String, value: Vec<u8>) -> Result<(), store::Error> {
        KvCall::set(self, bucket.rep(), &key, value).await.map_err(to_wasi)
    }

    async fn delete(&mut self, bucket: Resource<store::Bucket>, key: String) -> Result<(), store::Error> {
        KvCall::delete(self, bucket.rep(), &key).await.map_err(to_wasi)
    }

    async fn exists(&mut self, bucket: Resource<store::Bucket>, key: String) -> Result<bool, store::Error> {
        KvCall::exists(self, bucket.rep(), &key).await.map_err(to_wasi)
    }

    async fn list_keys(&mut self, bucket: Resource<store::Bucket>, cursor: Option<u64>) -> Result<store::KeyResponse, store::Error> {
        let (keys, cursor) = KvCall::list_keys(self, bucket.rep(), cursor).await.map_err(to_wasi)?;
        Ok(store::KeyResponse { keys, cursor })
    }

    fn drop(&mut self, bucket: Resource<store::Bucket>) -> wasmtime::Result<()> {
        self.close(bucket.rep());
        Ok(())
    }
}

impl atomics::Host for KvCall {
    async fn increment(&mut self, bucket: Resource<store::Bucket>, key: String, delta: u64) -> Result<u64, store::Error> {
        KvCall::increment(self, bucket.rep(), &key, delta).await.map_err(to_wasi)
    }
}

impl batch::Host for KvCall {
    async fn get_many(&mut self, bucket: Resource<store::Bucket>, keys: Vec<String>) -> Result<Vec<Option<(String, Vec<u8>)>>, store::Error> {
        KvCall::get_many(self, bucket.rep(), keys).await.map_err(to_wasi)
    }

    async fn set_many(&mut self, bucket: Resource<store::Bucket>, key_values: Vec<(String, Vec<u8>)>) -> Result<(), store::Error> {
        KvCall::set_many(self, bucket.rep(), key_values).await.map_err(to_wasi)
    }

    async fn delete_many(&mut self, bucket: Resource<store::Bucket>, keys: Vec<String>) -> Result<(), store::Error> {
        KvCall::delete_many(self, bucket.rep(), keys).await.map_err(to_wasi)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use wasmtime::component::{HasSelf, Linker};
    use wasmux_bindings::keyvalue::Imports;

    use super::super::{KvLimits, Store};
    use super::*;

    #[test]
    fn the_interfaces_link() {
        let engine = wasmtime::Engine::default();
        let mut linker: Linker<KvCall> = Linker::new(&engine);
        Imports::add_to_linker::<KvCall, HasSelf<KvCall>>(&mut linker, |call| call).expect("wasi:keyvalue links");
    }

    #[tokio::test]
    async fn the_guest_sees_the_interface_errors() {
        let limits = KvLimits { max_key: 4, operations_per_request: 4, ..KvLimits::default() };
        let mut call = KvCall::new(Store::in_memory(), "alpha", "p", Arc::default(), limits);
        call.begin(Instant::now() + Duration::from_secs(5), limits);
        assert!(matches!(store::Host::open(&mut call, "other".into()).expect("no trap"), Err(store::Error::NoSuchStore)));
        let bucket = store::Host::open(&mut call, "default".into()).expect("no trap").expect("default opens");
        let rep = bucket.rep();
        assert_eq!(atomics::Host::increment(&mut call, Resource::new_borrow(rep), "n".into(), 3).await.unwrap(), 3);
        let long = store::HostBucket::set(&mut call, Resource::new_borrow(rep), "too long".into(), b"v".to_vec()).await;
        assert!(matches!(&long, Err(store::Error::Other(m)) if m.contains("max-key-size")), "{long:?}");
        let spent = store::HostBucket::get(&mut call, Resource::new_borrow(rep), "n".into()).await;
        assert!(matches!(&spent, Err(store::Error::Other(m)) if m.contains("operations-per-request")), "{spent:?}");
        store::HostBucket::drop(&mut call, bucket).unwrap();
    }
}
