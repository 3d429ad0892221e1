-- The lab's shared data: users, products and reviews, read by both apps (neither writes here).
-- Dropped and recreated on every seed, so seeding is idempotent.

DROP TABLE IF EXISTS reviews, products, users CASCADE;

CREATE TABLE users (
    id            integer PRIMARY KEY,
    username      text    NOT NULL UNIQUE,
    -- pbkdf2_sha256$<iterations>$<salt hex>$<hash hex>
    password_hash text    NOT NULL
);

CREATE TABLE products (
    id          integer PRIMARY KEY,
    name        text    NOT NULL,
    price_cents integer NOT NULL CHECK (price_cents >= 0)
);

-- No index on reviews.product_id, on purpose: the per-product aggregate scans the table, a few
-- ms of real database work per cache miss. That cost is what the product cache exists to save.
CREATE TABLE reviews (
    id         bigint   PRIMARY KEY,
    product_id integer  NOT NULL,  -- foreign keys: added by seed.py after the bulk load
    user_id    integer  NOT NULL,
    rating     smallint NOT NULL CHECK (rating BETWEEN 1 AND 5)
);
