//! The rate limiter in Redis, on the real test Redis: GCRA bursts and waits, keys are
//! independent, instances share one budget, and an unreachable Redis admits (fails open)
//! quickly.

mod common;

use std::time::{Duration, Instant};

use common::redis::TestRedis;
use payments::limit::Limiter;
use payments::redis_conn::Redis;

#[tokio::test]
async fn bursts_to_the_rate_then_refuses_with_a_wait() {
    let redis = TestRedis::new();
    let limiter = Limiter::redis(redis.handle(), 5);
    for i in 0..5 {
        assert_eq!(limiter.admit("alice").await, Ok(()), "request {i}");
    }
    let wait = limiter.admit("alice").await.unwrap_err();
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_millis(200),
        "{wait:?}"
    );
    // The key is under the prefix and expires on its own.
    assert_eq!(redis.keys(), vec![format!("{}rl:alice", redis.prefix)]);
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{}rl:alice", redis.prefix))
        .query(&mut redis.connection())
        .unwrap();
    assert!(ttl > 0 && ttl <= 1_100, "ttl {ttl} ms");
    // sleep: the limiter's window passing is the behaviour: once the wait has passed, one more fits
    tokio::time::sleep(wait + Duration::from_millis(5)).await;
    assert_eq!(limiter.admit("alice").await, Ok(()));
}

#[tokio::test]
async fn keys_are_independent() {
    let redis = TestRedis::new();
    let limiter = Limiter::redis(redis.handle(), 3);
    for _ in 0..3 {
        limiter.admit("alice").await.unwrap();
    }
    assert!(limiter.admit("alice").await.is_err());
    for i in 0..3 {
        assert_eq!(limiter.admit("bob").await, Ok(()), "bob's request {i}");
    }
    assert!(limiter.admit("bob").await.is_err());
}

#[tokio::test]
async fn instances_sharing_redis_share_the_budget() {
    let redis = TestRedis::new();
    // Two handles, two connections: as two instances of the service would have.
    let first = Limiter::redis(redis.handle(), 4);
    let second = Limiter::redis(redis.handle(), 4);
    let mut admitted = 0;
    for i in 0..8 {
        let limiter = if i % 2 == 0 { &first } else { &second };
        if limiter.admit("alice").await.is_ok() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 4, "one budget of 4 across both instances");
    // In process, each instance would have had its own budget.
    let (a, b) = (Limiter::local(4), Limiter::local(4));
    let mut local = 0;
    for i in 0..8 {
        let limiter = if i % 2 == 0 { &a } else { &b };
        if limiter.admit("alice").await.is_ok() {
            local += 1;
        }
    }
    assert_eq!(local, 8);
}

#[tokio::test]
async fn an_unreachable_redis_admits_quickly() {
    let limiter = Limiter::redis(
        Redis::open("redis://127.0.0.1:1", "keel-test-none:").unwrap(),
        1,
    );
    for i in 0..5 {
        let started = Instant::now();
        assert_eq!(
            limiter.admit("alice").await,
            Ok(()),
            "request {i} fails open"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "request {i}: {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn a_silent_redis_admits_within_the_timeout() {
    // A listener that accepts and never answers: the worst kind of outage.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let redis =
        Redis::open_with_timeout(&url, "keel-test-none:", Duration::from_millis(100)).unwrap();
    let limiter = Limiter::redis(redis, 1);
    for i in 0..3 {
        let started = Instant::now();
        assert_eq!(
            limiter.admit("alice").await,
            Ok(()),
            "request {i} fails open"
        );
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "request {i}: {:?}",
            started.elapsed()
        );
    }
    held.abort();
}
