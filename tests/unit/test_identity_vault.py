"""The personal-data vault: field encryption with per-record keys, blind indexes, masking."""

from __future__ import annotations

import dataclasses
import pathlib

import pytest

from avgate.kernel.keyring import new_key_line, parse_key_file
from avgate.kernel.personal_data import contains_personal_data
from services.identity.config import IdentitySettings
from services.identity.vault import (
    CROSS_TENANT,
    BlindIndexer,
    FieldDecryptionFailed,
    IndexKind,
    PersonalDataInText,
    UnknownKeyEncryptionKey,
    Vault,
    assert_no_personal_data,
    field_key_version,
    mask_credit_code,
    mask_mobile,
    mask_name,
    mask_organization_code,
    mask_organization_name,
    mask_resident_id,
)

ID_NUMBER = "11010519491231002X"


def key_text(*kids: str) -> str:
    return "".join(new_key_line(k) + "\n" for k in kids)


@pytest.fixture
def kek_text() -> str:
    return key_text("kek-1")


class TestFieldEncryption:
    def test_round_trip_through_the_stored_wrap(self, kek_text: str) -> None:
        vault = Vault.from_key_file_text(kek_text)
        wrapped, key = vault.new_data_key("subject-1")
        sealed = key.encrypt("resident_id_number", ID_NUMBER)
        assert ID_NUMBER.encode() not in sealed and ID_NUMBER.encode() not in wrapped.wrapped
        reopened = vault.open_data_key("subject-1", wrapped)
        assert reopened.decrypt("resident_id_number", sealed) == ID_NUMBER

    def test_each_encryption_is_fresh(self, kek_text: str) -> None:
        _, key = Vault.from_key_file_text(kek_text).new_data_key("subject-1")
        assert key.encrypt("name", "张三") != key.encrypt("name", "张三")

    def test_a_ciphertext_moved_to_another_field_does_not_decrypt(self, kek_text: str) -> None:
        _, key = Vault.from_key_file_text(kek_text).new_data_key("subject-1")
        sealed = key.encrypt("mobile", "+8613800138000")
        with pytest.raises(FieldDecryptionFailed) as error:
            key.decrypt("name", sealed)
        assert "13800138000" not in str(error.value)

    def test_a_ciphertext_moved_to_another_record_does_not_decrypt(self, kek_text: str) -> None:
        vault = Vault.from_key_file_text(kek_text)
        wrapped_a, key_a = vault.new_data_key("subject-a")
        sealed = key_a.encrypt("name", "张三")
        # Even with subject a's key material, the record id is bound in: b's row cannot hold a's ciphertext.
        with pytest.raises(FieldDecryptionFailed):
            vault.open_data_key("subject-b", wrapped_a)
        _, key_b = vault.new_data_key("subject-b")
        with pytest.raises(FieldDecryptionFailed):
            key_b.decrypt("name", sealed)

    def test_a_tampered_ciphertext_is_refused(self, kek_text: str) -> None:
        _, key = Vault.from_key_file_text(kek_text).new_data_key("subject-1")
        sealed = bytearray(key.encrypt("name", "张三"))
        sealed[-1] ^= 1
        with pytest.raises(FieldDecryptionFailed):
            key.decrypt("name", bytes(sealed))

    def test_field_ciphertexts_name_their_data_key_version(self, kek_text: str) -> None:
        vault = Vault.from_key_file_text(kek_text)
        wrapped, key = vault.new_data_key("subject-1", version=3)
        sealed = key.encrypt("name", "张三")
        assert field_key_version(sealed) == 3 == wrapped.version
        _, other_version = vault.new_data_key("subject-1", version=4)
        with pytest.raises(FieldDecryptionFailed, match="version 3"):
            other_version.decrypt("name", sealed)

    def test_a_wrap_edited_to_another_version_does_not_unwrap(self, kek_text: str) -> None:
        vault = Vault.from_key_file_text(kek_text)
        wrapped, _ = vault.new_data_key("subject-1", version=1)
        with pytest.raises(FieldDecryptionFailed):
            vault.open_data_key("subject-1", dataclasses.replace(wrapped, version=2))


class TestKekRotation:
    def test_old_wraps_open_after_a_new_kek_is_appended(self) -> None:
        old_text = key_text("kek-1")
        wrapped, key = Vault.from_key_file_text(old_text).new_data_key("subject-1")
        sealed = key.encrypt("name", "张三")
        rotated = Vault.from_key_file_text(old_text + key_text("kek-2"))
        assert rotated.current_kek_id == "kek-2"
        assert rotated.open_data_key("subject-1", wrapped).decrypt("name", sealed) == "张三"
        assert rotated.new_data_key("subject-2")[0].kek_id == "kek-2"

    def test_rewrap_moves_a_key_to_the_current_kek_and_the_old_kek_can_go(self) -> None:
        old_text = key_text("kek-1")
        new_line = key_text("kek-2")
        wrapped, key = Vault.from_key_file_text(old_text).new_data_key("subject-1")
        sealed = key.encrypt("name", "张三")
        rewrapped = Vault.from_key_file_text(old_text + new_line).rewrap("subject-1", wrapped)
        assert rewrapped.kek_id == "kek-2"
        only_new = Vault.from_key_file_text(new_line)
        assert only_new.open_data_key("subject-1", rewrapped).decrypt("name", sealed) == "张三"
        with pytest.raises(UnknownKeyEncryptionKey):
            only_new.open_data_key("subject-1", wrapped)


class TestCryptoShredding:
    def test_without_the_wrapped_key_nothing_decrypts(self, kek_text: str) -> None:
        vault = Vault.from_key_file_text(kek_text)
        stored = {"wrapped": vault.new_data_key("subject-1")[0]}
        key = vault.open_data_key("subject-1", stored["wrapped"])
        sealed = {f: key.encrypt(f, v) for f, v in {"name": "张三", "resident_id_number": ID_NUMBER}.items()}
        del stored["wrapped"], key  # erasure: the caller deletes the wrapped data key
        # A fresh key for the same record (what a new verification would make) does not open the old fields.
        _, fresh = vault.new_data_key("subject-1")
        for field, ciphertext in sealed.items():
            with pytest.raises(FieldDecryptionFailed):
                fresh.decrypt(field, ciphertext)


class TestBlindIndexes:
    def test_stable_for_the_same_key_file(self) -> None:
        text = key_text("idx-1")
        a = BlindIndexer.from_key_file_text(text).index(IndexKind.RESIDENT_ID, "acme", ID_NUMBER)
        b = BlindIndexer.from_key_file_text(text).index(IndexKind.RESIDENT_ID, "acme", ID_NUMBER)
        assert a == b and a.version == "idx-1" and len(a.digest) == 32
        assert ID_NUMBER not in repr(a)

    def test_tenants_kinds_and_values_are_separated(self) -> None:
        indexer = BlindIndexer.from_key_file_text(key_text("idx-1"))
        digests = {
            indexer.index(IndexKind.RESIDENT_ID, "acme", ID_NUMBER).digest,
            indexer.index(IndexKind.RESIDENT_ID, "globex", ID_NUMBER).digest,
            indexer.index(IndexKind.RESIDENT_ID, CROSS_TENANT, ID_NUMBER).digest,
            indexer.index(IndexKind.MOBILE, "acme", ID_NUMBER).digest,
            indexer.index(IndexKind.RESIDENT_ID, "acme", "110105194912310021").digest,
        }
        assert len(digests) == 5

    def test_scope_and_kind_cannot_be_forged_with_separators(self) -> None:
        indexer = BlindIndexer.from_key_file_text(key_text("idx-1"))
        with pytest.raises(ValueError):
            indexer.index(IndexKind.MOBILE, "acme\x00mobile", "x")
        with pytest.raises(ValueError):
            indexer.index("", "acme", "x")

    def test_a_new_key_gives_a_new_version_and_index_all_covers_every_version(self) -> None:
        old_text = key_text("idx-1")
        old = BlindIndexer.from_key_file_text(old_text).index(IndexKind.MOBILE, "acme", "+8613800138000")
        rotating = BlindIndexer.from_key_file_text(old_text + key_text("idx-2"))
        assert rotating.current_version == "idx-2"
        new = rotating.index(IndexKind.MOBILE, "acme", "+8613800138000")
        assert new.version == "idx-2" and new.digest != old.digest
        # The re-index job stores every version; lookups during the rotation match either.
        assert rotating.index_all(IndexKind.MOBILE, "acme", "+8613800138000") == [old, new]
        assert rotating.index_version("idx-1", IndexKind.MOBILE, "acme", "+8613800138000") == old
        with pytest.raises(KeyError):
            rotating.index_version("idx-0", IndexKind.MOBILE, "acme", "+8613800138000")


class TestMasking:
    @pytest.mark.parametrize(
        ("name", "masked"),
        [("张三", "张*"), ("欧阳娜娜", "欧***"), ("王", "*"), ("John Doe", "J*** D**"), ("买买提·艾力", "买**·**")],
        ids=["two", "four", "one", "latin", "middle-dot"],
    )
    def test_names(self, name: str, masked: str) -> None:
        assert mask_name(name) == type(mask_name(name))(masked, "name")

    def test_numbers(self) -> None:
        assert mask_resident_id(ID_NUMBER).masked == "110***********002X"
        assert mask_resident_id(ID_NUMBER).kind == "resident_id"
        assert mask_mobile("+8613812341234").masked == "+86 138****1234"
        assert mask_credit_code("91110000600037341L").masked == "91************341L"
        assert mask_organization_code("600037341").masked == "60*****41"
        assert mask_organization_name("北京某某科技有限公司").masked == "北京******公司"
        assert mask_organization_name("某公司").masked == "某**"

    @pytest.mark.parametrize(
        "masked",
        [
            mask_resident_id(ID_NUMBER).masked,
            mask_mobile("+8613812341234").masked,
            mask_credit_code("91110000600037341L").masked,
        ],
    )
    def test_masked_values_pass_the_personal_data_guard(self, masked: str) -> None:
        assert not contains_personal_data(masked)
        assert_no_personal_data(f"flow for {masked}", "reason")


class TestPersonalDataGuard:
    @pytest.mark.parametrize(
        "text",
        [ID_NUMBER, "+86 138 1234 1234", "0086-138-1234-1234", "008613812341234", "代码91110000600037341L"],
        ids=["id", "grouped-mobile", "0086-grouped", "0086-glued", "credit-code"],
    )
    def test_refuses_text_with_personal_data_without_echoing_it(self, text: str) -> None:
        with pytest.raises(PersonalDataInText) as error:
            assert_no_personal_data(text, "reason")
        assert text not in str(error.value) and "reason" in str(error.value)


class TestKeyFileSettings:
    def test_local_key_files_are_generated_and_named_as_stand_ins(self, tmp_path: pathlib.Path) -> None:
        settings = IdentitySettings(state_dir=tmp_path)
        keks, index_keys = settings.vault_keys()
        assert settings.own_vault_kek_file.stat().st_mode & 0o777 == 0o600
        assert keks.keys != index_keys.keys
        assert settings.vault_keys()[0] == keks  # generated once, then read
        problems = " ".join(settings.local_stand_ins())
        assert "IDENTITY_VAULT_KEK_FILE" in problems and "IDENTITY_BLIND_INDEX_KEY_FILE" in problems

    def test_configured_files_are_not_stand_ins_and_errors_name_the_variable(self, tmp_path: pathlib.Path) -> None:
        kek, index = tmp_path / "vault.kek", tmp_path / "index.keys"
        kek.write_text(key_text("k1", "k2"))
        index.write_text("i1 not-base64!\n")
        settings = IdentitySettings(state_dir=tmp_path, vault_kek_file=kek, blind_index_key_file=index)
        problems = " ".join(settings.local_stand_ins())
        assert "IDENTITY_VAULT_KEK_FILE" not in problems and "IDENTITY_BLIND_INDEX_KEY_FILE" not in problems
        with pytest.raises(ValueError, match=r"IDENTITY_BLIND_INDEX_KEY_FILE.*line 1"):
            settings.vault_keys()
        assert parse_key_file(kek.read_text()).current == "k2"
