//! The test Redis, shared by concurrent tests: each test gets a key prefix of its own (and, to
//! cut exactly its service's connections, a Redis user of its own), removed when dropped.

use payments::redis_conn::Redis;

/// Where the test Redis lives; `PAYMENTS_TEST_REDIS_URL` overrides it.
pub fn redis_url() -> String {
    std::env::var("PAYMENTS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A prefix `keel-test-<random>:` on the test Redis, and optionally a user
/// `keel-test-<random>` whose connections [`TestRedis::kill_connections`] cuts. Dropping it
/// deletes the prefix's keys and the user.
pub struct TestRedis {
    pub prefix: String,
    /// The URL the service under test should use (with the user's credentials, if any).
    pub url: String,
    user: Option<String>,
    control: redis::Client,
}

impl TestRedis {
    /// A fresh prefix on the test Redis, reached as the default user.
    pub fn new() -> Self {
        let name = format!("keel-test-{:016x}", rand::random::<u64>());
        let control = redis::Client::open(redis_url()).unwrap();
        control
            .get_connection()
            .expect("Redis for tests (see scripts/test.sh)");
        Self {
            prefix: format!("{name}:"),
            url: redis_url(),
            user: None,
            control,
        }
    }

    /// A fresh prefix, and a user of its own that [`TestRedis::url`] logs in as.
    pub fn with_user() -> Self {
        let mut this = Self::new();
        let user = this.prefix.trim_end_matches(':').to_owned();
        let password = format!("{:016x}", rand::random::<u64>());
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(&user)
            .arg("on")
            .arg(format!(">{password}"))
            .arg(format!("~{}*", this.prefix))
            .arg("+@all")
            .query(&mut this.connection())
            .unwrap();
        let base = redis_url();
        let rest = base.strip_prefix("redis://").unwrap();
        this.url = format!("redis://{user}:{password}@{rest}");
        this.user = Some(user);
        this
    }

    /// A Redis handle on this prefix for the code under test (connecting as the user, if any).
    pub fn handle(&self) -> Redis {
        Redis::open(&self.url, self.prefix.clone()).unwrap()
    }

    /// A connection of the test's own, as the default user.
    pub fn connection(&self) -> redis::Connection {
        self.control.get_connection().unwrap()
    }

    /// The keys under the prefix.
    pub fn keys(&self) -> Vec<String> {
        let mut connection = self.connection();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query(&mut connection)
            .unwrap();
        keys
    }

    /// Cuts every connection of the user (the service's), and returns how many there were.
    pub fn kill_connections(&self) -> usize {
        let user = self.user.as_ref().expect("a TestRedis::with_user");
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("USER")
            .arg(user)
            .query(&mut self.connection())
            .unwrap()
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let Ok(mut connection) = self.control.get_connection() else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query(&mut connection)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = redis::cmd("DEL").arg(keys).query(&mut connection);
        }
        if let Some(user) = &self.user {
            let _: Result<(), _> = redis::cmd("ACL")
                .arg("DELUSER")
                .arg(user)
                .query(&mut connection);
        }
    }
}
