//! One `bind`, two apps: the listener split by address, each part served by its own router
//! (standalone, so that the test needs no front; a generation's listener splits the same way).

mod common;

use axum::{Router, routing::get};

#[tokio::test]
async fn each_address_can_be_served_by_its_own_app() {
    let public_addr = common::free_addr();
    let admin_addr = common::free_addr();
    let listener = risefront::Builder::new()
        .standalone()
        .bind([public_addr, admin_addr])
        .await
        .expect("bind");
    let parts = listener.split();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0].local_addrs(), [public_addr]);
    assert_eq!(parts[1].local_addrs(), [admin_addr]);
    let mut parts = parts.into_iter();
    let (public, admin) = (parts.next().unwrap(), parts.next().unwrap());
    tokio::spawn(async move {
        axum::serve(public, Router::new().route("/", get(|| async { "public" }))).await
    });
    tokio::spawn(async move {
        axum::serve(admin, Router::new().route("/", get(|| async { "admin" }))).await
    });
    assert_eq!(
        common::get(public_addr, "/").await,
        Ok((200, "public".to_owned()))
    );
    assert_eq!(
        common::get(admin_addr, "/").await,
        Ok((200, "admin".to_owned()))
    );
}
